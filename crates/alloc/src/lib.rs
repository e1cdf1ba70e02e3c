//! The global allocator of every keyward binary (and of the benches and the bare pingora floor
//! they are measured against): mimalloc.
//!
//! `mimalloc::MiMalloc` asks for every allocation through mimalloc's aligned entry point, even
//! where the alignment is one every mimalloc block has. mimalloc 3's aligned entry point takes
//! its fast path only for blocks up to 1 KiB that happen to be aligned; anything else goes
//! through its generic path and, unless the size class is a power of two, through an
//! over-allocation of `size + align - 1` bytes — the next size class up, and some 300
//! instructions more (microsoft/mimalloc#889 reports the same). keyward's request path
//! allocates ~90 times per request, a sixth of them that way: measured under callgrind (see
//! docs/performance.md), 4 000 instructions a request, 4 % of the public route.
//!
//! So an alignment mimalloc gives anyway goes to `mi_malloc` / `mi_zalloc` / `mi_realloc`, and
//! only larger ones to the aligned functions. Every mimalloc block is aligned to
//! `MI_MAX_ALIGN_SIZE` (16 bytes) when its size is a multiple of 16: the first block of every
//! page starts 16-aligned and every size class from 64 bytes up is a multiple of 16, and below
//! 64 bytes the classes are the word multiples themselves. A Rust layout's size is a multiple of
//! its alignment, so a layout aligned to at most 16 whose size is at least its alignment lands
//! in a class that keeps it. The tests check that claim against the linked mimalloc.

#![allow(unsafe_code)] // this crate's purpose; each block says why it is sound

use core::alloc::{GlobalAlloc, Layout};
use core::ffi::c_void;
use libmimalloc_sys as ffi;

/// The alignment every mimalloc block of a fitting size has (mimalloc's `MI_MAX_ALIGN_SIZE`).
const NATURAL_ALIGN: usize = 16;

/// mimalloc, with plain allocations where the alignment allows (see the crate docs).
pub struct Allocator;

/// Whether mimalloc's plain functions give `align` for a block of `size` bytes.
#[inline]
fn natural(align: usize, size: usize) -> bool {
    align <= NATURAL_ALIGN && align <= size
}

// SAFETY: every pointer returned comes from mimalloc, is aligned as the layout asks (the plain
// functions only where `natural` holds, see above; the aligned ones otherwise), and is freed or
// resized only by mimalloc, which accepts any of its pointers in `mi_free`/`mi_realloc*`.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if natural(layout.align(), layout.size()) {
            // SAFETY: mimalloc's malloc has no preconditions.
            unsafe { ffi::mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: a Layout's alignment is a non-zero power of two, as mimalloc requires.
            unsafe { ffi::mi_malloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if natural(layout.align(), layout.size()) {
            // SAFETY: as `alloc`.
            unsafe { ffi::mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: as `alloc`.
            unsafe { ffi::mi_zalloc_aligned(layout.size(), layout.align()).cast() }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: the caller passes a pointer this allocator returned, so one of mimalloc's.
        unsafe { ffi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if natural(layout.align(), new_size) {
            // SAFETY: `ptr` is one of mimalloc's (the caller's contract); the new block is
            // naturally aligned as above.
            unsafe { ffi::mi_realloc(ptr.cast::<c_void>(), new_size).cast() }
        } else {
            // SAFETY: as above, with the alignment asked for explicitly.
            unsafe {
                ffi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::undocumented_unsafe_blocks)]
    use super::*;

    /// Every layout the plain path serves comes back aligned as asked, whatever the size
    /// class: all sizes to 2 KiB, then every size class boundary region up to 1 MiB, several
    /// blocks of each so that blocks past the first of a page are checked too.
    #[test]
    fn plain_allocations_keep_the_alignment_asked_for() {
        let mut sizes: Vec<usize> = (1..=2048).collect();
        let mut size = 2048;
        while size <= 1 << 20 {
            sizes.extend([size - 16, size, size + 16, size + size / 4, size + size / 2]);
            size *= 2;
        }
        // Every alignment the plain path is used for, as the constant says.
        let aligns = (0..)
            .map(|i| 1usize << i)
            .take_while(|&a| a <= NATURAL_ALIGN);
        for align in aligns {
            for &size in &sizes {
                let size = size.next_multiple_of(align);
                let layout = Layout::from_size_align(size, align).unwrap();
                let blocks: Vec<*mut u8> =
                    (0..5).map(|_| unsafe { Allocator.alloc(layout) }).collect();
                for &p in &blocks {
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                }
                // Grown and shrunk in place or moved: still aligned, contents kept.
                unsafe { p_write(blocks[0], size) };
                let grown = unsafe { Allocator.realloc(blocks[0], layout, size * 2) };
                assert_eq!(grown as usize % align, 0);
                assert!(unsafe { p_check(grown, size) });
                unsafe {
                    Allocator.dealloc(grown, Layout::from_size_align(size * 2, align).unwrap())
                };
                for &p in &blocks[1..] {
                    unsafe { Allocator.dealloc(p, layout) };
                }
                let zeroed = unsafe { Allocator.alloc_zeroed(layout) };
                assert_eq!(zeroed as usize % align, 0);
                assert!(unsafe { std::slice::from_raw_parts(zeroed, size) }
                    .iter()
                    .all(|&b| b == 0));
                unsafe { Allocator.dealloc(zeroed, layout) };
            }
        }
    }

    /// The plain path is taken exactly for the alignments mimalloc promises (not the larger
    /// ones it happens to give in practice, which the test above cannot tell apart).
    #[test]
    fn only_promised_alignments_take_the_plain_path() {
        assert!(natural(1, 1) && natural(8, 24) && natural(16, 16) && natural(16, 4096));
        assert!(!natural(32, 32) && !natural(64, 4096) && !natural(4096, 4096));
    }

    /// Alignments above 16 go to mimalloc's aligned functions, and get what they ask for.
    #[test]
    fn large_alignments_are_asked_for() {
        for align in [32, 64, 128, 4096] {
            for size in [align, align * 3, 10_000usize.next_multiple_of(align)] {
                let layout = Layout::from_size_align(size, align).unwrap();
                let p = unsafe { Allocator.alloc(layout) };
                assert_eq!(p as usize % align, 0, "size {size} align {align}");
                let grown = unsafe { Allocator.realloc(p, layout, size * 4) };
                assert_eq!(grown as usize % align, 0);
                unsafe {
                    Allocator.dealloc(grown, Layout::from_size_align(size * 4, align).unwrap())
                };
            }
        }
    }

    unsafe fn p_write(p: *mut u8, len: usize) {
        for i in 0..len {
            unsafe { p.add(i).write(i as u8) };
        }
    }

    unsafe fn p_check(p: *mut u8, len: usize) -> bool {
        (0..len).all(|i| unsafe { p.add(i).read() } == i as u8)
    }
}
