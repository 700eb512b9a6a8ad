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
        advise_huge_pages(&mut data);
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

/// `len` zeros, on huge pages where the kernel gives them ([`advise_huge_pages`]): for weights and
/// scratch buffers of a megabyte and up.
pub fn zeroed(len: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(len);
    advise_huge_pages(&mut v);
    v.resize(len, 0.0);
    v
}

/// Grows `v` to at least `len` values (new ones zero), the new capacity on huge pages: for buffers
/// kept between calls.
pub fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        if v.capacity() < len {
            let mut bigger = zeroed(len);
            bigger[..v.len()].copy_from_slice(v);
            *v = bigger;
        }
        v.resize(len, 0.0);
    }
}

/// Asks Linux to back `v`'s untouched capacity with transparent huge pages (`madvise(MADV_HUGEPAGE)`;
/// most distributions enable THP only where asked). Why: on this project's 2-core VM a 4 KiB page
/// fault costs ~10 µs of kernel time, so first touching gigabytes of weights, arenas and Winograd
/// transforms spent seconds in page faults (`/usr/bin/time`: 1.85M faults, 21 s system time for one
/// 512² generation); a 2 MiB page is one fault instead of 512, and fewer TLB misses when the GEMMs
/// stream the weights. Only a hint: where it is refused or not Linux, nothing changes.
fn advise_huge_pages(v: &mut Vec<f32>) {
    const HUGE: usize = 2 << 20;
    let bytes = 4 * (v.capacity() - v.len());
    if bytes < 2 * HUGE {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        let start = v.as_mut_ptr().wrapping_add(v.len()) as usize;
        let aligned = start.next_multiple_of(4096);
        let len = (start + bytes - aligned) / 4096 * 4096;
        // SAFETY: the range lies within `v`'s allocation (its spare capacity, page-aligned inward);
        // MADV_HUGEPAGE changes no contents, only how the pages are backed.
        unsafe { libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
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
    fn grow_keeps_the_values_and_zero_fills() {
        let mut v = vec![1.0, 2.0];
        grow(&mut v, 3 << 20);
        assert_eq!((v.len(), &v[..3]), (3 << 20, &[1.0, 2.0, 0.0][..]));
        assert!(v.iter().skip(2).all(|&x| x == 0.0));
        grow(&mut v, 5);
        assert_eq!(v.len(), 3 << 20, "grow never shrinks");
        assert!(zeroed(3 << 20).iter().all(|&x| x == 0.0));
    }

    #[test]
    fn more_than_the_machine_has_is_refused_not_aborted() {
        let m = HostMemory::default();
        let e = m.alloc(usize::MAX / 2).unwrap_err().to_string();
        assert!(e.contains("out of host memory"), "{e}");
    }
}
