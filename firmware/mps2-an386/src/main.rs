//! Example firmware: the built-in Fashion-MNIST DiNAT (an `na export-edge`
//! blob, f16 weights) classifies the images embedded beside it, on a
//! Cortex-M4F (Arm MPS2 AN386 as `qemu-system-arm` models it), with
//! `na-edge`'s `no_std` path: no allocator, one arena on the stack. Results
//! go to the host over semihosting; `run.sh` builds, runs and compares them
//! with `na classify` on the host.
//!
//! Build-time inputs (paths, read by `include_bytes!`):
//! - `NA_EDGE_BLOB`: the weight blob (`na export-edge OUT.naedge`).
//! - `NA_EDGE_INPUTS`: the prepared images (`--images ... --inputs IN.f32`),
//!   `[n, 1, 28, 28]` little-endian f32.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};

use cortex_m::peripheral::{syst::SystClkSource, SYST};
use cortex_m_rt::{entry, exception};
use cortex_m_semihosting::{debug, hprintln};
use na_edge::EdgeModel;

/// Bytes aligned for in-place f32/f16 views (the blob aligns its tensors to
/// 64 bytes relative to its start).
#[repr(C, align(64))]
struct Aligned<T: ?Sized>(T);

static BLOB: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("NA_EDGE_BLOB")));
static INPUTS: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("NA_EDGE_INPUTS")));

/// The ten Fashion-MNIST classes, by label (as `na_model::fashion::CLASSES`).
const CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Image side of the model's input.
const SIDE: usize = 28;

/// Arena reserved on the stack, in f32 (the plan's exact need is printed and
/// checked against it).
const ARENA: usize = 72 * 1024;

/// SysTick reload: the 24-bit counter's full range.
const RELOAD: u32 = (1 << 24) - 1;

/// SysTick wraps so far (one per `RELOAD + 1` ticks).
static WRAPS: AtomicU32 = AtomicU32::new(0);

#[exception]
fn SysTick() {
    WRAPS.fetch_add(1, Ordering::Relaxed);
}

/// Processor-clock ticks since SysTick was started (it counts down from
/// `RELOAD`; the exception counts the wraps).
fn ticks() -> u64 {
    loop {
        let w = WRAPS.load(Ordering::Relaxed);
        let v = SYST::get_current();
        if WRAPS.load(Ordering::Relaxed) == w {
            return u64::from(w) * u64::from(RELOAD + 1) + u64::from(RELOAD - v);
        }
    }
}

/// Starts SysTick on the processor clock, wrapping every `RELOAD + 1` ticks.
fn start_clock(mut syst: SYST) {
    syst.set_clock_source(SystClkSource::Core);
    syst.set_reload(RELOAD);
    syst.clear_current();
    syst.enable_interrupt();
    syst.enable_counter();
}

/// Reads little-endian f32 `i` of `bytes`.
fn f32_at(bytes: &[u8], i: usize) -> f32 {
    let b = &bytes[4 * i..4 * i + 4];
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The MPS2 boards' processor clock (QEMU models SysTick on it).
const CLOCK_HZ: u64 = 25_000_000;

fn run() -> Result<(), na_edge::EdgeError> {
    let model = EdgeModel::new(&BLOB.0)?;
    let plan = model.plan(SIDE, SIDE)?;
    hprintln!(
        "model: {} blob bytes, arena {} bytes (of {} reserved), {} multiply-adds per image",
        BLOB.0.len(),
        plan.arena_bytes(),
        ARENA * 4,
        plan.macs()
    );
    if plan.arena_len() > ARENA {
        hprintln!(
            "error: the arena needs {} f32, {} reserved",
            plan.arena_len(),
            ARENA
        );
        finish(debug::EXIT_FAILURE)
    }
    let mut arena = [0.0f32; ARENA];
    let n = plan.input_len();
    if n != SIDE * SIDE || !INPUTS.0.len().is_multiple_of(4 * n) {
        hprintln!(
            "error: the model takes {} values per image, the inputs hold {} bytes of {}x{} images",
            n,
            INPUTS.0.len(),
            SIDE,
            SIDE
        );
        finish(debug::EXIT_FAILURE)
    }
    let images = INPUTS.0.len() / (4 * n);
    let mut image = [0.0f32; SIDE * SIDE];
    let mut logits = [0.0f32; CLASSES.len()];
    for i in 0..images {
        for (j, v) in image[..n].iter_mut().enumerate() {
            *v = f32_at(&INPUTS.0, i * n + j);
        }
        let t0 = ticks();
        model.logits(
            &plan,
            &image[..n],
            &mut arena[..plan.arena_len()],
            &mut logits,
        )?;
        let dt = ticks() - t0;
        let (best, _) =
            logits
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (k, &v)| {
                    if v > bv {
                        (k, v)
                    } else {
                        (bi, bv)
                    }
                });
        // Under `qemu-system-arm -icount shift=0` one instruction is one
        // nanosecond of virtual time, so ticks x 1e9 / CLOCK_HZ counts them.
        hprintln!(
            "image {}: {} (logit {:.4}); {} ticks = {} ns of virtual time",
            i,
            CLASSES[best],
            logits[best],
            dt,
            dt * 1_000_000_000 / CLOCK_HZ
        );
    }
    Ok(())
}

#[entry]
fn main() -> ! {
    let Some(p) = cortex_m::Peripherals::take() else {
        hprintln!("error: the core peripherals were already taken");
        finish(debug::EXIT_FAILURE)
    };
    start_clock(p.SYST);
    match run() {
        Ok(()) => {
            hprintln!("done");
            finish(debug::EXIT_SUCCESS)
        }
        Err(e) => {
            hprintln!("error: {}", e);
            finish(debug::EXIT_FAILURE)
        }
    }
}

/// Ends the emulation with `status` (semihosting), or sleeps on a board
/// without a debugger attached.
fn finish(status: debug::ExitStatus) -> ! {
    debug::exit(status);
    loop {
        cortex_m::asm::wfi();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    hprintln!("panic: {}", info);
    finish(debug::EXIT_FAILURE)
}
