//! Networking: `lo` up, then DHCP on the first Ethernet interface, its address, netmask, MTU,
//! default route and `/etc/resolv.conf`. Every wait is bounded; failure is a warning, never
//! fatal.

pub mod dhcp;

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{modules, say, sys};
use dhcp::{MsgType, Reply, Request};

/// How long to wait for an Ethernet interface to appear (udev in the initramfs may still be
/// loading its driver).
const LINK_WAIT: Duration = Duration::from_secs(10);
/// After this long without an interface, load the drivers for the devices present (and the
/// usual virtual NIC drivers) ourselves.
const MODULE_AFTER: Duration = Duration::from_secs(2);
/// DISCOVER attempts; the wait for a reply doubles each time from [`FIRST_WAIT`] (1+2+4+8 s).
const ATTEMPTS: u32 = 4;
/// The first wait for a reply.
const FIRST_WAIT: Duration = Duration::from_secs(1);
/// Most packets read while waiting for one reply (others' traffic on the segment).
const MAX_PACKETS: usize = 64;
/// NIC drivers tried when no interface showed up by itself.
const NIC_MODULES: [&str; 1] = ["virtio_net"];

/// What DHCP configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The interface.
    pub ifname: String,
    /// The address.
    pub addr: Ipv4Addr,
    /// The netmask.
    pub mask: Ipv4Addr,
    /// The default gateway.
    pub router: Option<Ipv4Addr>,
}

/// Brings up `lo` and configures the first Ethernet interface by DHCP. Returns what was
/// configured, or None (with a warning already printed) when there is no network.
pub fn setup(hostname: &str) -> Option<Lease> {
    let sock = match UdpSocket::bind("0.0.0.0:0") {
        Ok(s) => s,
        Err(e) => {
            say!("warning: no IPv4 socket ({e}); continuing without network");
            return None;
        }
    };
    if let Err(e) = sys::if_up(&sock, "lo") {
        say!("warning: cannot bring up lo: {e}");
    }
    let Some((ifname, mac)) = wait_for_link() else {
        say!("warning: no Ethernet interface found; continuing without network");
        return None;
    };
    if let Err(e) = sys::if_up(&sock, &ifname) {
        say!("warning: cannot bring up {ifname}: {e}; continuing without network");
        return None;
    }
    let reply = match dhcp(&ifname, mac, hostname) {
        Ok(r) => r,
        Err(e) => {
            say!("warning: DHCP on {ifname} failed: {e}; continuing without network");
            return None;
        }
    };
    match apply(&sock, &ifname, &reply) {
        Ok(lease) => {
            say!(
                "{ifname}: {}/{} via {}",
                lease.addr,
                lease.mask,
                lease
                    .router
                    .map_or("(no router)".to_string(), |r| r.to_string())
            );
            write_resolv_conf(&reply);
            Some(lease)
        }
        Err(e) => {
            say!("warning: configuring {ifname}: {e}; continuing without network");
            None
        }
    }
}

/// The first Ethernet interface (by name) and its MAC, waiting up to [`LINK_WAIT`].
fn wait_for_link() -> Option<(String, [u8; 6])> {
    let start = Instant::now();
    let mut loaded = false;
    loop {
        if let Some(l) = first_ethernet(Path::new("/sys/class/net")) {
            return Some(l);
        }
        if !loaded && start.elapsed() >= MODULE_AFTER {
            loaded = true;
            match modules::load_for_devices() {
                Ok(m) if !m.is_empty() => say!("loaded modules for the devices: {}", m.join(" ")),
                Ok(_) => {}
                Err(e) => say!("loading modules for the devices: {e}"),
            }
            for m in NIC_MODULES {
                if let Err(e) = modules::load(m) {
                    say!("loading {m}: {e}");
                }
            }
        }
        if start.elapsed() >= LINK_WAIT {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The first interface under `class_net` (`/sys/class/net`) of type Ethernet (1), by name,
/// with its MAC address.
pub fn first_ethernet(class_net: &Path) -> Option<(String, [u8; 6])> {
    let mut names: Vec<String> = std::fs::read_dir(class_net)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    names.into_iter().find_map(|n| {
        let dir = class_net.join(&n);
        let kind = std::fs::read_to_string(dir.join("type")).ok()?;
        if kind.trim() != "1" {
            return None;
        }
        let mac = parse_mac(std::fs::read_to_string(dir.join("address")).ok()?.trim())?;
        Some((n, mac))
    })
}

/// Parses `52:54:00:12:34:56`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn random_xid(mac: [u8; 6]) -> u32 {
    use std::io::Read;
    let mut b = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u32::from_ne_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    t ^ u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]])
}

/// DISCOVER, OFFER, REQUEST, ACK on `ifname`; bounded by [`ATTEMPTS`] with doubling waits.
fn dhcp(ifname: &str, mac: [u8; 6], hostname: &str) -> Result<Reply, String> {
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, dhcp::CLIENT_PORT))
        .map_err(|e| format!("binding UDP port {}: {e}", dhcp::CLIENT_PORT))?;
    sock.set_broadcast(true)
        .map_err(|e| format!("SO_BROADCAST: {e}"))?;
    sys::reuse_addr(&sock).map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    sys::bind_to_device(&sock, ifname).map_err(|e| format!("SO_BINDTODEVICE: {e}"))?;
    let server = SocketAddrV4::new(Ipv4Addr::BROADCAST, dhcp::SERVER_PORT);
    let xid = random_xid(mac);
    let hostname = (!hostname.is_empty()).then(|| hostname.to_string());
    let mut wait = FIRST_WAIT;
    for _ in 0..ATTEMPTS {
        let discover = Request {
            kind: MsgType::Discover,
            xid,
            mac,
            requested: None,
            hostname: hostname.clone(),
        };
        sock.send_to(&discover.encode(), server)
            .map_err(|e| format!("sending DHCPDISCOVER: {e}"))?;
        if let Some(offer) = receive(&sock, xid, mac, &[MsgType::Offer], wait) {
            let Some(server_id) = offer.server_id else {
                continue;
            };
            let request = Request {
                kind: MsgType::Request,
                xid,
                mac,
                requested: Some((offer.yiaddr, server_id)),
                hostname: hostname.clone(),
            };
            sock.send_to(&request.encode(), server)
                .map_err(|e| format!("sending DHCPREQUEST: {e}"))?;
            match receive(&sock, xid, mac, &[MsgType::Ack, MsgType::Nak], wait) {
                Some(r) if r.kind == Some(MsgType::Ack) => return Ok(r),
                _ => {}
            }
        }
        wait = wait.saturating_mul(2);
    }
    Err(format!("no answer after {ATTEMPTS} attempts"))
}

/// Waits up to `wait` for a reply to transaction `xid` of one of `kinds`.
fn receive(
    sock: &UdpSocket,
    xid: u32,
    mac: [u8; 6],
    kinds: &[MsgType],
    wait: Duration,
) -> Option<Reply> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    for _ in 0..MAX_PACKETS {
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            return None;
        }
        let Ok((n, _)) = sock.recv_from(&mut buf) else {
            return None;
        };
        match Reply::decode(&buf[..n]) {
            Ok(r)
                if r.xid == xid
                    && r.chaddr == mac
                    && r.kind.is_some_and(|k| kinds.contains(&k)) =>
            {
                return Some(r);
            }
            _ => {}
        }
    }
    None
}

fn same_subnet(a: Ipv4Addr, b: Ipv4Addr, mask: Ipv4Addr) -> bool {
    u32::from(a) & u32::from(mask) == u32::from(b) & u32::from(mask)
}

/// Sets the address, netmask, MTU and default route from an ACK.
fn apply(sock: &UdpSocket, ifname: &str, r: &Reply) -> Result<Lease, String> {
    let mask = r.netmask();
    if let Some(mtu) = r.mtu {
        if let Err(e) = sys::if_set_mtu(sock, ifname, mtu) {
            say!("warning: MTU {mtu} on {ifname}: {e}");
        }
    }
    sys::if_set_addr(sock, ifname, r.yiaddr, mask)
        .map_err(|e| format!("address {}: {e}", r.yiaddr))?;
    if let Some(gw) = r.router {
        if !same_subnet(gw, r.yiaddr, mask) {
            // A gateway outside the subnet (a /32 lease, as on GCE) needs a host route first.
            ignore_exists(sys::add_route(sock, ifname, gw, Ipv4Addr::BROADCAST, None))
                .map_err(|e| format!("route to {gw}: {e}"))?;
        }
        ignore_exists(sys::add_route(
            sock,
            ifname,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Some(gw),
        ))
        .map_err(|e| format!("default route via {gw}: {e}"))?;
    }
    Ok(Lease {
        ifname: ifname.to_string(),
        addr: r.yiaddr,
        mask,
        router: r.router,
    })
}

fn ignore_exists(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// The text of `/etc/resolv.conf` for a lease (None when it names no DNS server).
pub fn resolv_conf(r: &Reply) -> Option<String> {
    if r.dns.is_empty() {
        return None;
    }
    let mut s = String::from("# written by stamp-init from DHCP\n");
    if let Some(d) = &r.domain {
        if d.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-')
        {
            s.push_str(&format!("search {d}\n"));
        }
    }
    for ns in r.dns.iter().take(3) {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    Some(s)
}

fn write_resolv_conf(r: &Reply) {
    let Some(text) = resolv_conf(r) else {
        return;
    };
    let path = Path::new("/etc/resolv.conf");
    if std::fs::write(path, &text).is_ok() {
        return;
    }
    // A dangling symlink (to systemd-resolved's file) or a missing /etc: replace the link.
    let _ = std::fs::remove_file(path);
    let _ = std::fs::create_dir_all("/etc");
    if let Err(e) = std::fs::write(path, &text) {
        say!("warning: cannot write /etc/resolv.conf: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_and_rejects_junk() {
        assert_eq!(
            parse_mac("52:54:00:12:34:56"),
            Some([0x52, 0x54, 0, 0x12, 0x34, 0x56])
        );
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("zz:54:00:12:34:56"), None);
    }

    #[test]
    fn first_ethernet_skips_loopback_and_other_types() {
        let d = tempfile::tempdir().unwrap();
        let mk = |n: &str, t: &str, a: &str| {
            std::fs::create_dir(d.path().join(n)).unwrap();
            std::fs::write(d.path().join(n).join("type"), t).unwrap();
            std::fs::write(d.path().join(n).join("address"), a).unwrap();
        };
        mk("lo", "772\n", "00:00:00:00:00:00\n");
        mk("sit0", "776\n", "00:00:00:00\n");
        mk("ens4", "1\n", "42:01:0a:80:00:02\n");
        mk("eth0", "1\n", "52:54:00:12:34:56\n");
        assert_eq!(
            first_ethernet(d.path()),
            Some(("ens4".to_string(), [0x42, 1, 10, 0x80, 0, 2]))
        );
    }

    #[test]
    fn resolv_conf_lists_servers_and_a_sane_domain() {
        let mut r = Reply::default();
        assert_eq!(resolv_conf(&r), None);
        r.dns = vec![Ipv4Addr::new(10, 0, 2, 3)];
        r.domain = Some("example.internal".into());
        let t = resolv_conf(&r).unwrap();
        assert!(
            t.contains("search example.internal\nnameserver 10.0.2.3\n"),
            "{t}"
        );
        r.domain = Some("evil\nnameserver 6.6.6.6".into());
        assert!(!resolv_conf(&r).unwrap().contains("6.6.6.6"));
    }

    #[test]
    fn gateway_outside_the_subnet_is_detected() {
        let m = Ipv4Addr::new(255, 255, 255, 0);
        assert!(same_subnet(
            Ipv4Addr::new(10, 0, 2, 2),
            Ipv4Addr::new(10, 0, 2, 15),
            m
        ));
        assert!(!same_subnet(
            Ipv4Addr::new(10, 128, 0, 1),
            Ipv4Addr::new(10, 128, 0, 2),
            Ipv4Addr::BROADCAST
        ));
    }
}
