//! Run-time compilation with NVRTC, loaded dynamically (`libnvrtc.so.12`).
//!
//! Sources are compiled for the device's exact architecture
//! (`--gpu-architecture=sm_XY`) and the cubin is taken with `nvrtcGetCUBIN`. When the
//! loaded NVRTC does not know the architecture (a GPU newer than the
//! library), the newest virtual architecture it knows that the device can run
//! is used instead and the result is PTX, which the driver JIT-compiles.

use std::ffi::{c_char, c_int, CString};

use cudarc::nvrtc::{result, sys};

use crate::spec::KernelSpec;
use crate::CudaError;

/// What a compilation produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ImageKind {
    /// Machine code for one real architecture (an ELF file).
    Cubin,
    /// PTX text for a virtual architecture (JIT-compiled at load).
    Ptx,
}

/// A compiled module image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Cubin or PTX.
    pub kind: ImageKind,
    /// The bytes (PTX without its trailing NUL).
    pub bytes: Vec<u8>,
}

impl Image {
    /// Whether the bytes are what the kind says: an ELF header for a cubin,
    /// a `.version` directive for PTX.
    pub fn looks_valid(&self) -> bool {
        match self.kind {
            ImageKind::Cubin => self.bytes.starts_with(b"\x7fELF"),
            ImageKind::Ptx => {
                !self.bytes.contains(&0) && self.bytes.windows(8).any(|w| w == b".version")
            }
        }
    }
}

/// The target NVRTC compiles for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// `--gpu-architecture=sm_XY`: a cubin for exactly this architecture.
    Real(u32),
    /// `--gpu-architecture=compute_XY`: PTX the driver JIT-compiles.
    Virtual(u32),
}

impl Target {
    /// The NVRTC option selecting it.
    pub fn option(&self) -> String {
        match self {
            Target::Real(a) => format!("--gpu-architecture=sm_{a}"),
            Target::Virtual(a) => format!("--gpu-architecture=compute_{a}"),
        }
    }
}

/// Picks the target for a device of compute capability `arch` (e.g. 90)
/// given the architectures the loaded NVRTC supports (`nvrtcGetSupportedArchs`):
/// the real architecture when known, else the newest known one not above it
/// as PTX. `None` when NVRTC knows nothing the device can run.
pub fn pick_target(arch: u32, supported: &[u32]) -> Option<Target> {
    if supported.contains(&arch) {
        return Some(Target::Real(arch));
    }
    supported
        .iter()
        .copied()
        .filter(|&a| a <= arch)
        .max()
        .map(Target::Virtual)
}

/// Whether an NVRTC library can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the candidate library names; no symbol of
    // the library is called.
    unsafe { sys::is_culib_present() }
}

pub(crate) fn ensure_nvrtc() -> Result<(), CudaError> {
    if nvrtc_present() {
        Ok(())
    } else {
        Err(CudaError::NoCuda {
            library: "NVRTC (libnvrtc)",
            hint: "install the nvidia-cuda-nvrtc-cu12 wheel or a CUDA toolkit and put its lib \
                   directory on LD_LIBRARY_PATH",
        })
    }
}

/// The loaded NVRTC's version `(major, minor)`.
pub fn version() -> Result<(i32, i32), CudaError> {
    ensure_nvrtc()?;
    let (mut major, mut minor): (c_int, c_int) = (0, 0);
    // SAFETY: the library is present (checked above); both pointers are to
    // live locals.
    let r = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    nvrtc_status("nvrtcVersion", r)?;
    Ok((major, minor))
}

/// The real architectures the loaded NVRTC can compile for (e.g. `[50, ..., 120]`).
pub fn supported_archs() -> Result<Vec<u32>, CudaError> {
    ensure_nvrtc()?;
    let mut n: c_int = 0;
    // SAFETY: the library is present; `n` is a live local.
    nvrtc_status("nvrtcGetNumSupportedArchs", unsafe {
        sys::nvrtcGetNumSupportedArchs(&mut n)
    })?;
    let mut archs = vec![0 as c_int; n.max(0) as usize];
    // SAFETY: `archs` holds the `n` ints NVRTC writes.
    nvrtc_status("nvrtcGetSupportedArchs", unsafe {
        sys::nvrtcGetSupportedArchs(archs.as_mut_ptr())
    })?;
    Ok(archs.into_iter().map(|a| a as u32).collect())
}

fn nvrtc_status(call: &str, r: sys::nvrtcResult) -> Result<(), CudaError> {
    r.result().map_err(|e| CudaError::Nvrtc {
        name: call.to_string(),
        options: String::new(),
        log: format!("{:?}", e.0),
    })
}

/// The options every compilation uses besides the target.
pub fn base_options() -> Vec<String> {
    vec!["--std=c++17".into(), "--fmad=true".into()]
}

/// All options for `target`.
pub fn options_for(target: Target) -> Vec<String> {
    let mut o = vec![target.option()];
    o.extend(base_options());
    o
}

/// Compiles `source` (program `name`) with `options`; returns the cubin when
/// the target is a real architecture, else PTX.
pub fn compile(source: &str, name: &str, options: &[String]) -> Result<Image, CudaError> {
    compile_with_log(source, name, options).map(|(img, _)| img)
}

/// [`compile`], also returning NVRTC's log of a successful compilation
/// (warnings; with `--ptxas-options=--verbose`, register and spill counts).
pub fn compile_with_log(
    source: &str,
    name: &str,
    options: &[String],
) -> Result<(Image, String), CudaError> {
    ensure_nvrtc()?;
    let fail = |log: String| CudaError::Nvrtc {
        name: name.to_string(),
        options: options.join(" "),
        log,
    };
    let src = CString::new(source).map_err(|_| fail("source contains a NUL byte".into()))?;
    let cname = CString::new(name).map_err(|_| fail("name contains a NUL byte".into()))?;
    let prog =
        result::create_program(&src, Some(&cname)).map_err(|e| fail(format!("{:?}", e.0)))?;
    // SAFETY: `prog` was created above and is destroyed exactly once, below;
    // `src` and `cname` outlive it.
    let compiled = unsafe { result::compile_program(prog, options) };
    // SAFETY: as above.
    let log = unsafe { result::get_program_log(prog) }
        .map(|l| c_chars_to_string(&l))
        .unwrap_or_default();
    let out = match compiled {
        Err(e) => Err(fail(if log.trim().is_empty() {
            format!("{:?}", e.0)
        } else {
            log
        })),
        Ok(()) => {
            let wants_cubin = options
                .iter()
                .any(|o| o.starts_with("--gpu-architecture=sm_"));
            // SAFETY: `prog` is live and compiled.
            unsafe { take_image(prog, wants_cubin) }
                .map(|img| (img, log))
                .map_err(|e| fail(format!("{:?}", e.0)))
        }
    };
    // SAFETY: `prog` is live; it is not used after this.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// Reads the cubin (when asked for and present) or the PTX of a compiled program.
///
/// # Safety
/// `prog` must be a live, successfully compiled program.
unsafe fn take_image(prog: sys::nvrtcProgram, cubin: bool) -> Result<Image, result::NvrtcError> {
    if cubin {
        let mut size = 0usize;
        sys::nvrtcGetCUBINSize(prog, &mut size).result()?;
        if size > 0 {
            let mut bytes = vec![0u8; size];
            sys::nvrtcGetCUBIN(prog, bytes.as_mut_ptr() as *mut c_char).result()?;
            return Ok(Image {
                kind: ImageKind::Cubin,
                bytes,
            });
        }
    }
    let ptx = result::get_ptx(prog)?;
    let mut bytes: Vec<u8> = ptx.iter().map(|&c| c as u8).collect();
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    Ok(Image {
        kind: ImageKind::Ptx,
        bytes,
    })
}

fn c_chars_to_string(s: &[c_char]) -> String {
    let bytes: Vec<u8> = s.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Compiles every entry point of `spec` for the real architecture `sm_{arch}`
/// (e.g. 80, 90) and returns the cubin. This is what the CI compile check
/// runs, without a GPU.
pub fn compile_spec_for_arch(spec: &KernelSpec, arch: u32) -> Result<Image, CudaError> {
    compile(
        &spec.source(),
        &spec.name(),
        &options_for(Target::Real(arch)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_prefer_the_exact_architecture() {
        let known = [75, 80, 86, 89, 90, 100, 120];
        assert_eq!(pick_target(90, &known), Some(Target::Real(90)));
        assert_eq!(pick_target(87, &known), Some(Target::Virtual(86)));
        assert_eq!(pick_target(130, &known), Some(Target::Virtual(120)));
        assert_eq!(pick_target(70, &known), None);
        assert_eq!(Target::Real(80).option(), "--gpu-architecture=sm_80");
        assert_eq!(
            Target::Virtual(120).option(),
            "--gpu-architecture=compute_120"
        );
        assert_eq!(options_for(Target::Real(90))[0], "--gpu-architecture=sm_90");
    }

    #[test]
    fn images_are_recognised_by_their_magic() {
        let cubin = Image {
            kind: ImageKind::Cubin,
            bytes: b"\x7fELF\x02\x01".to_vec(),
        };
        assert!(cubin.looks_valid());
        let ptx = Image {
            kind: ImageKind::Ptx,
            bytes: b"//\n.version 8.7\n.target sm_90\n".to_vec(),
        };
        assert!(ptx.looks_valid());
        assert!(!Image {
            kind: ImageKind::Cubin,
            bytes: ptx.bytes.clone()
        }
        .looks_valid());
    }

    #[test]
    fn missing_nvrtc_is_a_typed_error() {
        // Either outcome is fine here; what matters is no panic.
        match version() {
            Ok((major, _)) => assert!(major >= 11),
            Err(e) => assert!(e.is_unavailable(), "{e}"),
        }
    }
}
