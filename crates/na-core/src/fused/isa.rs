//! The instruction sets the fused kernels run on: [`Isa`], its run-time
//! detection (cached), the per-problem choice ([`Isa::best_for`]), and the
//! [`dispatch`] macro that instantiates a tile loop once per ISA behind
//! `#[target_feature]` trampolines.

use crate::{Error, Problem};

/// An instruction set the fused kernels can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// Portable code, 8 lanes, no FMA: whatever the compiler makes of it for
    /// the build target (SSE2 on x86-64, NEON on aarch64).
    Generic,
    /// aarch64 NEON with fused multiply-add, 8 lanes (two registers). Chosen
    /// at compile time (NEON is in the aarch64 baseline), so `no_std` builds
    /// have it too.
    #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
    Neon,
    /// x86-64 AVX2 with FMA, 8 lanes.
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    Avx2,
    /// x86-64 AVX-512F, 16 lanes.
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    Avx512,
}

impl Isa {
    /// A short lower-case name (`generic`, `neon`, `avx2`, `avx512`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
            Isa::Neon => "neon",
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            Isa::Avx2 => "avx2",
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            Isa::Avx512 => "avx512",
        }
    }

    /// Query lanes per tile (the SIMD width in `f32`): 16 on AVX-512, 8
    /// elsewhere. The scratch lengths of the `*_scratch_len_on` functions
    /// scale with it.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Generic => 8,
            #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
            Isa::Neon => 8,
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            Isa::Avx2 => 8,
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            Isa::Avx512 => 16,
        }
    }

    /// Query rows of one multi-row tile on the sliding-window path (see the
    /// module docs): 3 where the register file has 32 vectors (AVX-512), 2
    /// elsewhere.
    pub fn tile_rows(self) -> usize {
        match self {
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            Isa::Avx512 => 3,
            _ => 2,
        }
    }

    /// Whether this CPU can run `self`.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Generic => true,
            #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
            // A compile-time feature of the target (part of the aarch64 baseline).
            Isa::Neon => true,
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
        }
    }

    /// Every ISA of this build that this CPU can run, best last.
    pub fn available() -> impl Iterator<Item = Isa> {
        let all = [
            Isa::Generic,
            #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
            Isa::Neon,
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            Isa::Avx2,
            #[cfg(all(feature = "std", target_arch = "x86_64"))]
            Isa::Avx512,
        ];
        all.into_iter().filter(|i| i.is_available())
    }

    /// The best ISA of this CPU: detected once at run time and cached under
    /// `std`; without `std`, the best one the build target enables at compile
    /// time (NEON on aarch64, else [`Isa::Generic`]).
    pub fn best() -> Isa {
        #[cfg(feature = "std")]
        {
            static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
            *BEST.get_or_init(|| Isa::available().last().unwrap_or(Isa::Generic))
        }
        #[cfg(not(feature = "std"))]
        {
            Isa::available().last().unwrap_or(Isa::Generic)
        }
    }
}

impl Isa {
    /// The ISA the default entry points use for `p`: [`Isa::best`], except
    /// that AVX-512 gives way to AVX2 when the last spatial axis has dilation
    /// groups shorter than 64 positions. Tiles are one vector of queries of
    /// one group, so 16-lane tiles leave lanes idle on short groups (a
    /// group of 7 in `dinat-l0` fills 7 of 16), and on CPUs that split
    /// 512-bit operations in two (AMD Zen 4) the wider vector gains nothing
    /// to make up for it. Measured on Zen 4 (AMD EPYC, 2 cores, 2 threads,
    /// forward medians of `na bench --isa avx2|avx512`, files under
    /// `bench/results/isa/`): `dinat-l0` 1.34 ms (AVX2) vs 2.78 ms
    /// (AVX-512), `nat-l2` 0.43 vs 0.79, `vol-3d` 5.3 vs 7.1, `nat-l0` 1.15
    /// vs 1.46 (`cpu-*-small-fwd-na.json`, back to back); `seq-1d` 28.5 vs
    /// 25.5 and `hires` 41.6 vs 33.8 (`cpu-avx2-fwd-na.json`,
    /// `cpu-avx512-fwd-na.json`, a noisier pair).
    pub fn best_for(p: &Problem) -> Isa {
        let best = Isa::best();
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        if best == Isa::Avx512 {
            let a = p.axes3()[2];
            if a.len() / a.dilation() < 64 && Isa::Avx2.is_available() {
                return Isa::Avx2;
            }
        }
        let _ = p;
        best
    }
}

impl core::fmt::Display for Isa {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// `Ok` when this CPU can run `isa`, else [`Error::UnsupportedIsa`].
pub(crate) fn check_isa(isa: Isa) -> Result<(), Error> {
    if isa.is_available() {
        Ok(())
    } else {
        Err(Error::UnsupportedIsa { isa: isa.name() })
    }
}

/// Instantiates one chunk function per ISA behind `#[target_feature]`
/// trampolines, plus a safe dispatcher.
macro_rules! dispatch {
    ($name:ident, $generic:ident, ($($arg:ident: $ty:ty),*)) => {
        #[allow(clippy::too_many_arguments)]
        pub(crate) fn $name<T: $crate::Element>(isa: $crate::fused::isa::Isa, $($arg: $ty),*) {
            match isa {
                $crate::fused::isa::Isa::Generic => $generic::<$crate::fused::simd::Generic, 8, T>($crate::fused::simd::Generic::new(), $($arg),*),
                #[cfg(all(feature = "std", target_arch = "x86_64"))]
                $crate::fused::isa::Isa::Avx2 => {
                    #[target_feature(enable = "avx2,fma")]
                    #[allow(clippy::too_many_arguments)]
                    fn run<T: $crate::Element>($($arg: $ty),*) {
                        // SAFETY: this function only runs with AVX2 and FMA enabled.
                        let vx = unsafe { $crate::fused::simd::Avx2::new() };
                        $generic::<$crate::fused::simd::Avx2, 8, T>(vx, $($arg),*)
                    }
                    // SAFETY: every public entry point checks `isa.is_available()`
                    // (run-time detection of AVX2 and FMA) before dispatching here.
                    unsafe { run::<T>($($arg),*) }
                }
                #[cfg(all(feature = "std", target_arch = "x86_64"))]
                $crate::fused::isa::Isa::Avx512 => {
                    #[target_feature(enable = "avx512f,avx2,fma")]
                    #[allow(clippy::too_many_arguments)]
                    fn run<T: $crate::Element>($($arg: $ty),*) {
                        // SAFETY: this function only runs with AVX-512F enabled.
                        let vx = unsafe { $crate::fused::simd::Avx512::new() };
                        $generic::<$crate::fused::simd::Avx512, 16, T>(vx, $($arg),*)
                    }
                    // SAFETY: every public entry point checks `isa.is_available()`
                    // (run-time detection of AVX-512F, AVX2 and FMA) first.
                    unsafe { run::<T>($($arg),*) }
                }
                #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
                // NEON is enabled at compile time: no trampoline needed.
                $crate::fused::isa::Isa::Neon => {
                    $generic::<$crate::fused::simd::Neon, 8, T>($crate::fused::simd::Neon::new(), $($arg),*)
                }
            }
        }
    };
}

pub(crate) use dispatch;
