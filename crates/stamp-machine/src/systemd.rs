//! Placeholder until the systemd wrapper lands.
#![allow(missing_docs)]
use crate::runtime::Local;
use crate::{Machine, MachineService, MachineSpec, Result};
use std::io::Write;
use std::time::Duration;
pub fn notify(_: &str) -> std::io::Result<bool> {
    Ok(false)
}
pub struct Systemd {
    local: Local,
}
impl Systemd {
    pub fn new(local: Local, _user: bool) -> Self {
        Systemd { local }
    }
}
impl MachineService for Systemd {
    fn create(&self, s: &MachineSpec) -> Result<Machine> {
        self.local.create(s)
    }
    fn start(&self, n: &str) -> Result<Machine> {
        self.local.start(n)
    }
    fn pause(&self, n: &str) -> Result<Machine> {
        self.local.pause(n)
    }
    fn resume(&self, n: &str) -> Result<Machine> {
        self.local.resume(n)
    }
    fn stop(&self, n: &str, t: Duration) -> Result<Machine> {
        self.local.stop(n, t)
    }
    fn delete(&self, n: &str, f: bool) -> Result<()> {
        self.local.delete(n, f)
    }
    fn get(&self, n: &str) -> Result<Machine> {
        self.local.get(n)
    }
    fn list(&self) -> Result<Vec<Machine>> {
        self.local.list()
    }
    fn logs(&self, n: &str, f: bool, s: Option<&str>, o: &mut dyn Write) -> Result<()> {
        self.local.logs(n, f, s, o)
    }
}
