//! Placeholder until the podman driver lands.
#![allow(missing_docs)]
use crate::driver::{Driver, Launch};
use crate::spec::MachineSpec;
use crate::store::MachineDir;
use crate::{Error, Result};
pub struct PodmanOptions;
impl PodmanOptions {
    pub fn from_env() -> Self {
        PodmanOptions
    }
}
pub struct Podman;
impl Podman {
    pub fn new(_: PodmanOptions) -> Self {
        Podman
    }
}
fn no<T>() -> Result<T> {
    Err(Error::Driver("podman driver not built".into()))
}
impl Driver for Podman {
    fn available(&self) -> Result<()> {
        no()
    }
    fn prepare(&self, _: &MachineSpec, _: &MachineDir) -> Result<()> {
        no()
    }
    fn launch(&self, _: &MachineSpec, _: &MachineDir) -> Result<Launch> {
        no()
    }
    fn started(&self, _: &MachineSpec, _: &MachineDir, _: u32) -> Result<()> {
        no()
    }
    fn pause(&self, _: &MachineSpec, _: &MachineDir) -> Result<()> {
        no()
    }
    fn resume(&self, _: &MachineSpec, _: &MachineDir) -> Result<()> {
        no()
    }
    fn shutdown(&self, _: &MachineSpec, _: &MachineDir) -> Result<()> {
        no()
    }
    fn kill(&self, _: &MachineSpec, _: &MachineDir) -> Result<()> {
        no()
    }
    fn cleanup(&self, _: &MachineSpec, _: &MachineDir) -> Result<()> {
        no()
    }
}
