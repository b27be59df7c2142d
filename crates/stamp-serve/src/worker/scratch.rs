//! The scratch-space quota shared by a process's workers: a task reserves the bytes it will
//! write into the scratch directory before it writes them, waits while they do not fit, and
//! gives them back when its [`Reservation`] drops.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::{Error, Result};

/// The quota and what is in use, shared by every worker of the process (cheap to clone).
#[derive(Debug, Clone)]
pub struct Scratch {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    quota: u64,
    used: Mutex<u64>,
    freed: Condvar,
}

/// Bytes of scratch space held by one task; released when dropped.
#[derive(Debug)]
pub struct Reservation {
    inner: Arc<Inner>,
    bytes: u64,
}

impl Scratch {
    /// A quota of `quota` bytes, nothing in use.
    pub fn new(quota: u64) -> Scratch {
        Scratch {
            inner: Arc::new(Inner {
                quota,
                used: Mutex::new(0),
                freed: Condvar::new(),
            }),
        }
    }

    /// The quota in bytes.
    pub fn quota(&self) -> u64 {
        self.inner.quota
    }

    /// Bytes reserved right now (for /metrics).
    pub fn in_use(&self) -> u64 {
        *lock(&self.inner.used)
    }

    /// Bytes free right now (for [`crate::db::TaskStore::claim`]'s `scratch_free`).
    pub fn free(&self) -> u64 {
        self.inner.quota.saturating_sub(self.in_use())
    }

    /// Reserves `bytes`, waiting until they fit; [`Error::TooLarge`] at once if they never
    /// can, [`Error::Cancelled`] if `cancelled` says so while waiting.
    pub fn reserve(&self, bytes: u64, cancelled: &dyn Fn() -> bool) -> Result<Reservation> {
        self.check_fits(bytes)?;
        let mut used = lock(&self.inner.used);
        loop {
            if cancelled() {
                return Err(Error::Cancelled);
            }
            if self.inner.quota - *used >= bytes {
                *used += bytes;
                return Ok(self.reservation(bytes));
            }
            used = match self
                .inner
                .freed
                .wait_timeout(used, Duration::from_millis(200))
            {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    /// Reserves `bytes` if they fit now; `Ok(None)` if they do not (yet),
    /// [`Error::TooLarge`] if they never can.
    pub fn try_reserve(&self, bytes: u64) -> Result<Option<Reservation>> {
        self.check_fits(bytes)?;
        let mut used = lock(&self.inner.used);
        if self.inner.quota - *used >= bytes {
            *used += bytes;
            Ok(Some(self.reservation(bytes)))
        } else {
            Ok(None)
        }
    }

    fn check_fits(&self, bytes: u64) -> Result<()> {
        if bytes > self.inner.quota {
            return Err(Error::TooLarge {
                needed: bytes,
                quota: self.inner.quota,
            });
        }
        Ok(())
    }

    fn reservation(&self, bytes: u64) -> Reservation {
        Reservation {
            inner: Arc::clone(&self.inner),
            bytes,
        }
    }
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Holds `extra` more bytes if they fit now (never waits: a task that holds space must
    /// not wait for more, or two could wait for each other). False if they do not fit.
    pub fn try_grow(&mut self, extra: u64) -> bool {
        let mut used = lock(&self.inner.used);
        if self.inner.quota - *used >= extra {
            *used += extra;
            self.bytes += extra;
            true
        } else {
            false
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = lock(&self.inner.used);
        *used = used.saturating_sub(self.bytes);
        drop(used);
        self.inner.freed.notify_all();
    }
}

fn lock(m: &Mutex<u64>) -> std::sync::MutexGuard<'_, u64> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_wait_for_room_and_release_on_drop() {
        let s = Scratch::new(100);
        let a = s.reserve(60, &|| false).unwrap();
        assert_eq!(s.in_use(), 60);
        assert!(s.try_reserve(50).unwrap().is_none());
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            let r = s2.reserve(50, &|| false).unwrap();
            r.bytes()
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(s.in_use(), 60, "the second waits while the first holds");
        drop(a);
        assert_eq!(t.join().unwrap(), 50);
        assert_eq!(s.in_use(), 0);
    }

    #[test]
    fn more_than_the_quota_fails_at_once() {
        let s = Scratch::new(10);
        assert!(matches!(
            s.reserve(11, &|| false),
            Err(Error::TooLarge {
                needed: 11,
                quota: 10
            })
        ));
        assert!(matches!(s.reserve(5, &|| true), Err(Error::Cancelled)));
        let mut r = s.reserve(5, &|| false).unwrap();
        assert!(r.try_grow(5));
        assert!(!r.try_grow(1));
        assert_eq!(s.in_use(), 10);
    }
}
