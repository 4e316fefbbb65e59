//! One value for "where the operator runs": the fused CPU kernels of
//! `na-core` or this crate's CUDA kernels, so callers (the `na` command
//! line) choose once instead of branching at every call.

use core::fmt;
use core::str::FromStr;

use na_core::{fused, Element, Grads, Inputs, Par, Problem, Saved};

use crate::{backward_host, forward_host, CudaContext, CudaError};

/// A device as a user names it: `cpu`, `cuda` (device 0) or `cuda:N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The fused CPU kernels.
    Cpu,
    /// The CUDA kernels on device `N`.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| format!("expected cpu, cuda or cuda:N, got `{s}`")),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// An opened device: host slices in, host slices out, on either side.
pub enum Device {
    /// `na-core`'s fused kernels with this parallelism.
    Cpu(Par),
    /// A CUDA context (inputs are copied to the GPU and results back).
    Cuda(CudaContext),
}

impl Device {
    /// Opens `spec`: nothing to open for the CPU; a CUDA context (an error
    /// naming what is missing without a driver, NVRTC or the device).
    pub fn open(spec: DeviceSpec, par: Par) -> Result<Self, CudaError> {
        Ok(match spec {
            DeviceSpec::Cpu => Device::Cpu(par),
            DeviceSpec::Cuda(n) => Device::Cuda(CudaContext::new(n)?),
        })
    }

    /// The forward pass (output, and log-sum-exp when given), as
    /// [`na_core::fused::forward`] defines it.
    pub fn forward<T: Element>(
        &self,
        p: &Problem,
        x: Inputs<'_, T>,
        out: &mut [T],
        lse: Option<&mut [f32]>,
    ) -> Result<(), CudaError> {
        match self {
            Device::Cpu(par) => Ok(fused::forward(p, x, out, lse, *par)?),
            Device::Cuda(ctx) => forward_host(ctx, p, x, out, lse),
        }
    }

    /// The backward pass, as [`na_core::fused::backward`] defines it.
    pub fn backward<T: Element>(
        &self,
        p: &Problem,
        x: Inputs<'_, T>,
        s: Saved<'_, T>,
        g: Grads<'_, T>,
    ) -> Result<(), CudaError> {
        match self {
            Device::Cpu(par) => Ok(fused::backward(p, x, s, g, *par)?),
            Device::Cuda(ctx) => backward_host(ctx, p, x, s, g),
        }
    }

    /// What ran, for messages: `N CPU thread(s)` or the GPU's name.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu(par) => format!("{} CPU thread(s)", par.threads()),
            Device::Cuda(ctx) => format!("{} (cuda:{})", ctx.info().name, ctx.info().ordinal),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        for (s, d) in [
            ("cpu", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(s.parse::<DeviceSpec>(), Ok(d));
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        for bad in ["gpu", "cuda:", "cuda:x", "CPU", ""] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cpu_device_runs_the_fused_kernels() {
        let p = Problem::new(1, &[6], 1, 2, 2, na_core::Params::new(&[3]).unwrap()).unwrap();
        let q: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
        let x = Inputs {
            query: &q,
            key: &q,
            value: &q,
            rpb: None,
        };
        let (mut a, mut b) = (vec![0.0f32; 12], vec![0.0f32; 12]);
        Device::open(DeviceSpec::Cpu, Par::Seq)
            .unwrap()
            .forward(&p, x, &mut a, None)
            .unwrap();
        fused::forward(&p, x, &mut b, None, Par::Seq).unwrap();
        assert_eq!(a, b);
    }
}
