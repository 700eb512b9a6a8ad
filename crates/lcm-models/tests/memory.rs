//! Weights are mapped once and copied once (into the backend), never read into a second buffer.
//!
//! A counting global allocator records the heap's high-water mark while a UNet loads. The weight file is
//! memory-mapped (page cache, not heap), so the heap peak must stay below the backend's own copy of the
//! weights plus one tensor in flight plus bookkeeping. Reading the file into memory first would add the
//! whole file size on top and fail this.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::fixtures;
use lcm_cpu::CpuBackend;
use lcm_models::{LoadOptions, Unet};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn loading_copies_the_weights_once() {
    let dir = fixtures().join("tiny-sd/unet");
    let file_bytes = std::fs::metadata(dir.join("diffusion_pytorch_model.safetensors")).unwrap().len() as usize;
    let before = CURRENT.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let unet = Unet::load(&CpuBackend::new(), &dir, LoadOptions::default()).unwrap();
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let specs = &unet.runner().weights.specs;
    let weights = 4 * specs.iter().map(|s| s.shape.iter().product::<usize>()).sum::<usize>();
    let largest = 4 * specs.iter().map(|s| s.shape.iter().product::<usize>()).max().unwrap();
    println!(
        "weights {weights} B (f32), file {file_bytes} B, largest tensor {largest} B, heap peak while loading {peak} B"
    );
    // Backend copy + the f32 staging buffer + one packed conv weight, plus graph/name bookkeeping.
    let bound = weights + 2 * largest + 512 * 1024;
    assert!(peak <= bound, "heap peak {peak} B exceeds {bound} B: is the file being copied?");
    assert!(peak < weights + file_bytes / 2, "heap peak {peak} B suggests a second copy of the {file_bytes} B file");
}
