//! What the store verbs share: opening the store, a registry client from the flags, and
//! per-blob progress bars.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, bail};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use stamp_oci::distribution::TransferProgress;
use stamp_oci::registry::{Client, RegistryOptions};
use stamp_oci::{Digest, Store};

use crate::cli::{RegistryArgs, StoreArgs};
use crate::progress::CancelFlag;

/// Opens (creating if needed) the store named by `--store`/`STAMP_STORE`, else the default.
pub fn open_store(a: &StoreArgs) -> Result<Store> {
    let root = a.store.clone().unwrap_or_else(Store::default_root);
    Store::open(&root).with_context(|| format!("cannot open the image store at {}", root.display()))
}

/// A registry client configured from the TLS and credential flags.
pub fn client(a: &RegistryArgs) -> Result<Client> {
    let creds = match &a.creds {
        Some(c) => match c.split_once(':') {
            Some((user, pass)) if !user.is_empty() => Some((user.to_string(), pass.to_string())),
            _ => bail!("--creds must be USER:PASSWORD"),
        },
        None => None,
    };
    let opts = RegistryOptions {
        tls_verify: a.tls_verify,
        cert_dir: a.cert_dir.clone(),
        creds,
        auth_file: a.authfile.clone(),
        ..RegistryOptions::default()
    };
    Ok(Client::new(opts)?)
}

/// One progress bar per blob on a terminal (nothing otherwise), with the short digest.
pub struct Bars {
    multi: Option<MultiProgress>,
    bars: Mutex<HashMap<Digest, ProgressBar>>,
    cancel: CancelFlag,
}

impl Bars {
    /// Bars on stderr when it is a terminal and `quiet` is false; Ctrl-C (`cancel`) stops the
    /// transfer.
    pub fn new(quiet: bool, cancel: &CancelFlag) -> Self {
        Bars {
            multi: (!quiet && std::io::stderr().is_terminal()).then(MultiProgress::new),
            bars: Mutex::new(HashMap::new()),
            cancel: cancel.clone(),
        }
    }
}

impl TransferProgress for Bars {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    fn start(&self, digest: &Digest, size: u64) {
        let Some(multi) = &self.multi else { return };
        let bar = multi.add(ProgressBar::new(size));
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(digest.hex()[..12].to_string());
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert(*digest, bar);
        }
    }

    fn advance(&self, digest: &Digest, done: u64) {
        if let Some(bar) = self.bars.lock().ok().and_then(|b| b.get(digest).cloned()) {
            bar.set_position(done);
        }
    }

    fn finish(&self, digest: &Digest, moved: bool) {
        if let Some(bar) = self.bars.lock().ok().and_then(|mut b| b.remove(digest)) {
            bar.finish_with_message(format!(
                "{} {}",
                &digest.hex()[..12],
                if moved { "done" } else { "exists" }
            ));
        }
    }
}
