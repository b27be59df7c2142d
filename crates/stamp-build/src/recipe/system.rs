//! `[system]`: hostname, locale and timezone.

use super::Recipe;
use super::tree_io::Io;
use crate::Result;

/// Applies hostname, locale and timezone.
pub fn apply(r: &Recipe, io: &mut Io<'_>) -> Result<()> {
    if let Some(h) = &r.hostname {
        io.write_file("/etc/hostname", format!("{h}\n").into_bytes(), 0o644)?;
        let short = h.split('.').next().unwrap_or(h);
        let names = if short == h {
            h.clone()
        } else {
            format!("{h} {short}")
        };
        let line = format!("127.0.1.1\t{names}");
        let text = match io.read_text("/etc/hosts")? {
            Some(old) => {
                let mut lines: Vec<String> = Vec::new();
                let mut done = false;
                for l in old.lines() {
                    if l.split_whitespace().next() == Some("127.0.1.1") {
                        if !done {
                            lines.push(line.clone());
                            done = true;
                        }
                    } else {
                        lines.push(l.to_string());
                    }
                }
                if !done {
                    // After the 127.0.0.1 line, as Debian's installer writes it.
                    let at = lines
                        .iter()
                        .position(|l| l.split_whitespace().next() == Some("127.0.0.1"))
                        .map_or(0, |i| i + 1);
                    lines.insert(at, line);
                }
                lines.join("\n") + "\n"
            }
            None => format!(
                "127.0.0.1\tlocalhost\n{line}\n\n::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n"
            ),
        };
        io.edit_file("/etc/hosts", text.into_bytes(), 0o644)?;
    }
    if let Some(l) = &r.locale {
        let text = format!("LANG={l}\n").into_bytes();
        io.write_file("/etc/default/locale", text.clone(), 0o644)?;
        io.write_file("/etc/locale.conf", text, 0o644)?;
    }
    if let Some(tz) = &r.timezone {
        let zone = format!("/usr/share/zoneinfo/{tz}");
        let utc = matches!(
            tz.as_str(),
            "UTC" | "Etc/UTC" | "Etc/Universal" | "Universal"
        );
        if io.is_file(&zone) {
            io.remove("/etc/localtime")?;
            io.symlink("/etc/localtime", &format!("..{zone}"))?;
        } else if utc {
            // Without tzdata: no /etc/localtime is UTC for glibc and systemd.
            io.remove("/etc/localtime")?;
        } else {
            let origin = r.origin("system.timezone");
            return Err(io.recipe_err(
                &origin,
                format!("the image has no {zone} (install tzdata in the image)"),
            ));
        }
        io.write_file("/etc/timezone", format!("{tz}\n").into_bytes(), 0o644)?;
    }
    Ok(())
}
