//! Host memory for arenas, counted: an arena the machine cannot hold is refused with an error before
//! any op runs, instead of the allocator aborting the process (or the kernel's OOM killer ending it
//! mid-run). The bound is the smaller of `MemAvailable` (Linux) and an optional cap
//! ([`crate::CpuBackend::set_memory_limit`], as the CUDA backend's device cap), the latter counting
//! every live arena of the backend.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use lcm_core::{Error, Result};

/// The bytes of live arenas and the cap on them (`u64::MAX`: none), shared with every arena.
#[derive(Debug)]
pub(crate) struct HostMemory {
    live: Arc<AtomicU64>,
    limit: AtomicU64,
}

impl Default for HostMemory {
    fn default() -> Self {
        HostMemory { live: Arc::default(), limit: AtomicU64::new(u64::MAX) }
    }
}

impl HostMemory {
    pub(crate) fn set_limit(&self, bytes: Option<u64>) {
        self.limit.store(bytes.unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(crate) fn live_bytes(&self) -> u64 {
        self.live.load(Ordering::Relaxed)
    }

    /// What may still be allocated: the cap less the live arenas, and `MemAvailable`.
    pub(crate) fn available(&self) -> Option<u64> {
        let limit = self.limit.load(Ordering::Relaxed);
        let cap = (limit != u64::MAX).then(|| limit.saturating_sub(self.live_bytes()));
        match (cap, mem_available()) {
            (Some(c), Some(m)) => Some(c.min(m)),
            (c, m) => c.or(m),
        }
    }

    /// A zeroed arena of `bytes`, or an error naming the request and the bound it passes.
    pub(crate) fn alloc(&self, bytes: usize) -> Result<HostArena> {
        let (live, limit, want) = (self.live_bytes(), self.limit.load(Ordering::Relaxed), bytes as u64);
        const HINT: &str = "a smaller image or batch needs less (and --vae-tiling bounds the VAE's part)";
        if live.saturating_add(want) > limit {
            return Err(Error::backend(format!(
                "out of host memory: an arena of {want} bytes requested with {live} of the {limit} allowed in use; {HINT}"
            )));
        }
        if let Some(available) = mem_available() {
            if want > available {
                return Err(Error::backend(format!(
                    "out of host memory: an arena of {want} bytes requested, {available} available \
                     (MemAvailable in /proc/meminfo); {HINT}"
                )));
            }
        }
        let mut data = Vec::new();
        data.try_reserve_exact(bytes / 4).map_err(|e| {
            Error::backend(format!("out of host memory: an arena of {want} bytes could not be allocated ({e}); {HINT}"))
        })?;
        data.resize(bytes / 4, 0.0);
        self.live.fetch_add(want, Ordering::Relaxed);
        Ok(HostArena { data, live: self.live.clone() })
    }
}

/// An arena: f32 slots, counted as live until dropped.
#[derive(Debug)]
pub struct HostArena {
    data: Vec<f32>,
    live: Arc<AtomicU64>,
}

impl Drop for HostArena {
    fn drop(&mut self) {
        self.live.fetch_sub(4 * self.data.len() as u64, Ordering::Relaxed);
    }
}

impl Deref for HostArena {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data
    }
}

impl DerefMut for HostArena {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
}

/// `MemAvailable` from /proc/meminfo in bytes; `None` where there is no such file (not Linux).
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_bytes_count_arenas_until_dropped_and_the_cap_refuses() {
        let m = HostMemory::default();
        let a = m.alloc(4096).unwrap();
        assert_eq!((a.len(), m.live_bytes()), (1024, 4096));
        m.set_limit(Some(6000));
        let e = m.alloc(4096).unwrap_err().to_string();
        assert!(e.contains("out of host memory") && e.contains("4096 bytes requested with 4096 of the 6000"), "{e}");
        drop(a);
        assert_eq!(m.live_bytes(), 0);
        assert!(m.alloc(4096).is_ok());
    }

    #[test]
    fn more_than_the_machine_has_is_refused_not_aborted() {
        let m = HostMemory::default();
        let e = m.alloc(usize::MAX / 2).unwrap_err().to_string();
        assert!(e.contains("out of host memory"), "{e}");
    }
}
