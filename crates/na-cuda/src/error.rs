//! The error type of every fallible operation in this crate.

use na_core::DType;

/// Everything that can go wrong between a call and a finished kernel.
///
/// Shape and parameter errors are na-core's own ([`na_core::Error`]), checked
/// before anything touches the device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// A CUDA library could not be loaded: no driver (`libcuda.so`) or no
    /// NVRTC (`libnvrtc.so.12`) on the loader's search path.
    #[error("CUDA is not available: {library} could not be loaded ({hint})")]
    NoCuda {
        /// Which library: `"the CUDA driver (libcuda)"` or `"NVRTC (libnvrtc)"`.
        library: &'static str,
        /// What to install or where the loader looks.
        hint: &'static str,
    },
    /// The driver loaded but there is no such device.
    #[error("no CUDA device with ordinal {ordinal} ({count} device(s) present)")]
    NoDevice {
        /// The ordinal that was asked for.
        ordinal: usize,
        /// How many devices the driver reports.
        count: usize,
    },
    /// A driver API call failed.
    #[error("CUDA driver call {call} failed: {code}")]
    Driver {
        /// The operation (`"cuInit"`, `"alloc"`, `"copy to device"`, ...).
        call: &'static str,
        /// The driver's error code name (`CUDA_ERROR_OUT_OF_MEMORY`, ...).
        code: String,
    },
    /// NVRTC rejected a kernel source; `log` is its compile log.
    #[error("NVRTC failed to compile {name} ({options}):\n{log}")]
    Nvrtc {
        /// The program name (which specialisation).
        name: String,
        /// The options it was compiled with.
        options: String,
        /// NVRTC's compile log (or the NVRTC status when there is none).
        log: String,
    },
    /// A kernel launch (or its completion) failed.
    #[error("launch of {kernel} failed: {code}")]
    Launch {
        /// The kernel's entry point.
        kernel: &'static str,
        /// The driver's error code name.
        code: String,
    },
    /// The shapes or parameters are invalid (SPEC.md), or a buffer has the
    /// wrong length for the problem.
    #[error(transparent)]
    Problem(#[from] na_core::Error),
    /// A tensor's storage type differs from the one the call needs.
    #[error("{tensor} is {got}, expected {expected}")]
    DTypeMismatch {
        /// Which tensor.
        tensor: &'static str,
        /// The type the call needs.
        expected: DType,
        /// The type it has.
        got: DType,
    },
    /// A valid problem this backend does not run (yet).
    #[error("unsupported on CUDA: {what}")]
    Unsupported {
        /// What exceeds which limit.
        what: String,
    },
}

impl CudaError {
    /// Whether the error means "no usable CUDA here" ([`CudaError::NoCuda`]
    /// or [`CudaError::NoDevice`]): callers and tests skip on it.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CudaError::NoCuda { .. } | CudaError::NoDevice { .. })
    }

    /// Maps a driver error of `call`.
    pub(crate) fn driver(call: &'static str, e: cudarc::driver::DriverError) -> Self {
        CudaError::Driver {
            call,
            code: format!("{:?}", e.0),
        }
    }

    /// Maps a driver error of launching (or completing) `kernel`.
    pub(crate) fn launch(kernel: &'static str, e: cudarc::driver::DriverError) -> Self {
        CudaError::Launch {
            kernel,
            code: format!("{:?}", e.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cudarc::driver::sys::cudaError_enum;
    use cudarc::driver::DriverError;

    #[test]
    fn driver_errors_keep_the_code_name() {
        let e = CudaError::driver(
            "alloc",
            DriverError(cudaError_enum::CUDA_ERROR_OUT_OF_MEMORY),
        );
        assert_eq!(
            e.to_string(),
            "CUDA driver call alloc failed: CUDA_ERROR_OUT_OF_MEMORY"
        );
        let e = CudaError::launch(
            "na_fwd",
            DriverError(cudaError_enum::CUDA_ERROR_ILLEGAL_ADDRESS),
        );
        assert!(
            matches!(&e, CudaError::Launch { kernel: "na_fwd", code } if code == "CUDA_ERROR_ILLEGAL_ADDRESS")
        );
        assert!(!e.is_unavailable());
    }

    #[test]
    fn problem_errors_pass_through() {
        let e: CudaError = na_core::Error::ZeroDimension { what: "batch" }.into();
        assert_eq!(e.to_string(), "batch must be at least 1, got 0");
        assert!(CudaError::NoDevice {
            ordinal: 1,
            count: 1
        }
        .is_unavailable());
    }
}
