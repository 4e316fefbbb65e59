//! The device, its stream, device tensors, module loading and the launches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    sys, CudaFunction, CudaSlice, CudaStream, LaunchArgs, LaunchConfig, PushKernelArg,
};
use na_core::{bf16, f16, DType, Element, Error, Problem};

use crate::cache::{cache_key, DiskCache};
use crate::nvrtc::{self, Image, ImageKind};
use crate::spec::{
    geometry, Geometry, KernelSpec, NaParams, ENTRY_BACKWARD_KV, ENTRY_BACKWARD_Q, ENTRY_FORWARD,
    ENTRY_RPB_REDUCE, MAX_RPB_PARTIAL, REDUCE_THREADS,
};
use crate::CudaError;

/// Whether the CUDA driver library can be loaded.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the candidate library names; no symbol of
    // the library is called.
    unsafe { sys::is_culib_present() }
}

fn no_driver() -> CudaError {
    CudaError::NoCuda {
        library: "the CUDA driver (libcuda)",
        hint: "install an NVIDIA driver; libcuda.so.1 must be on the loader's search path",
    }
}

/// Number of CUDA devices (`NoCuda` without a driver).
pub fn device_count() -> Result<usize, CudaError> {
    if !driver_present() {
        return Err(no_driver());
    }
    match cudarc::driver::result::init() {
        Ok(()) => {}
        Err(e) if e.0 == sys::cudaError_enum::CUDA_ERROR_NO_DEVICE => return Ok(0),
        Err(e) => return Err(CudaError::driver("cuInit", e)),
    }
    cudarc::driver::CudaContext::device_count()
        .map(|n| n.max(0) as usize)
        .map_err(|e| CudaError::driver("cuDeviceGetCount", e))
}

/// What a context runs on; recorded with every benchmark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device ordinal.
    pub ordinal: usize,
    /// Marketing name (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Compute capability as `10 * major + minor` (90 for sm_90).
    pub arch: u32,
    /// Driver API version as the driver reports it (13000 for 13.0).
    pub driver_version: i32,
}

impl DeviceInfo {
    /// The driver version as `major.minor` (`13.0`).
    pub fn driver(&self) -> String {
        format!(
            "{}.{}",
            self.driver_version / 1000,
            (self.driver_version % 1000) / 10
        )
    }
}

/// The compiled entry points of one [`KernelSpec`].
struct Kernels {
    fwd: CudaFunction,
    bwd_q: CudaFunction,
    bwd_kv: CudaFunction,
    reduce: CudaFunction,
}

/// Device memory holding one tensor, with its storage type. `f16` and `bf16`
/// are kept as their 16-bit patterns.
pub struct DeviceTensor {
    dtype: DType,
    buf: Buf,
}

enum Buf {
    F32(CudaSlice<f32>),
    Bits(CudaSlice<u16>),
}

impl DeviceTensor {
    /// The storage type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.buf {
            Buf::F32(s) => s.len(),
            Buf::Bits(s) => s.len(),
        }
    }
    /// Whether it holds no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for DeviceTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceTensor({}, {} elements)", self.dtype, self.len())
    }
}

/// The read-only device tensors of a call (layouts of [`Problem`]).
#[derive(Clone, Copy, Debug)]
pub struct DeviceInputs<'a> {
    /// `[batch, *spatial, heads, head_dim]`.
    pub query: &'a DeviceTensor,
    /// `[batch, *spatial, heads, head_dim]`.
    pub key: &'a DeviceTensor,
    /// `[batch, *spatial, heads, head_dim_v]`.
    pub value: &'a DeviceTensor,
    /// Optional bias `[heads, 2*k_0-1, ...]`.
    pub rpb: Option<&'a DeviceTensor>,
}

/// What a backward call reads besides the inputs.
#[derive(Clone, Copy, Debug)]
pub struct DeviceSaved<'a> {
    /// The forward output, `[batch, *spatial, heads, head_dim_v]` (only
    /// `<d_out, out>` per row is used).
    pub out: &'a DeviceTensor,
    /// The forward log-sum-exp, `[batch, *spatial, heads]`, f32.
    pub lse: &'a DeviceTensor,
    /// The gradient of the loss with respect to `out`.
    pub d_out: &'a DeviceTensor,
}

/// The gradients a backward call writes.
#[derive(Debug)]
pub struct DeviceGrads<'a> {
    /// `[batch, *spatial, heads, head_dim]`.
    pub d_query: &'a mut DeviceTensor,
    /// `[batch, *spatial, heads, head_dim]`.
    pub d_key: &'a mut DeviceTensor,
    /// `[batch, *spatial, heads, head_dim_v]`.
    pub d_value: &'a mut DeviceTensor,
    /// `[heads, 2*k_0-1, ...]`; only with `rpb`.
    pub d_rpb: Option<&'a mut DeviceTensor>,
}

/// One CUDA device with a stream, a module cache and the operator.
///
/// Creating it loads the driver; kernels are compiled (or read from the
/// disk cache) at first use per specialisation.
pub struct CudaContext {
    ctx: Arc<cudarc::driver::CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    modules: Mutex<HashMap<KernelSpec, Arc<Kernels>>>,
    disk: Option<DiskCache>,
}

impl std::fmt::Debug for CudaContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaContext")
            .field("info", &self.info)
            .field("disk_cache", &self.disk.as_ref().map(DiskCache::dir))
            .finish()
    }
}

fn check_len(tensor: &'static str, got: usize, expected: usize) -> Result<(), CudaError> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            tensor,
            expected,
            got,
        }
        .into())
    }
}

fn check_tensor(
    tensor: &'static str,
    t: &DeviceTensor,
    dtype: DType,
    len: usize,
) -> Result<(), CudaError> {
    if t.dtype != dtype {
        return Err(CudaError::DTypeMismatch {
            tensor,
            expected: dtype,
            got: t.dtype,
        });
    }
    check_len(tensor, t.len(), len)
}

/// Checks a forward call's device tensors against `p`; returns the storage type.
pub(crate) fn check_forward(
    p: &Problem,
    x: &DeviceInputs<'_>,
    out: &DeviceTensor,
    lse: Option<&DeviceTensor>,
) -> Result<DType, CudaError> {
    let dt = x.query.dtype;
    check_tensor("query", x.query, dt, p.qk_len())?;
    check_tensor("key", x.key, dt, p.qk_len())?;
    check_tensor("value", x.value, dt, p.v_len())?;
    if let Some(r) = x.rpb {
        check_tensor("rpb", r, dt, p.rpb_len())?;
    }
    check_tensor("out", out, dt, p.v_len())?;
    if let Some(l) = lse {
        check_tensor("lse", l, DType::F32, p.lse_len())?;
    }
    Ok(dt)
}

fn check_backward(
    p: &Problem,
    x: &DeviceInputs<'_>,
    s: &DeviceSaved<'_>,
    g: &DeviceGrads<'_>,
) -> Result<DType, CudaError> {
    let dt = check_forward(p, x, s.out, Some(s.lse))?;
    check_tensor("d_out", s.d_out, dt, p.v_len())?;
    check_tensor("d_query", g.d_query, dt, p.qk_len())?;
    check_tensor("d_key", g.d_key, dt, p.qk_len())?;
    check_tensor("d_value", g.d_value, dt, p.v_len())?;
    if let Some(d) = g.d_rpb.as_deref() {
        if x.rpb.is_none() {
            return Err(Error::GradRpbWithoutRpb.into());
        }
        check_tensor("d_rpb", d, dt, p.rpb_len())?;
    }
    Ok(dt)
}

/// Pushes a tensor as a `const T*` kernel argument.
fn arg<'a>(b: &mut LaunchArgs<'a>, t: &'a DeviceTensor) {
    match &t.buf {
        Buf::F32(s) => b.arg(s),
        Buf::Bits(s) => b.arg(s),
    };
}

/// Pushes a tensor as a `T*` kernel argument the kernel writes.
fn arg_mut<'a>(b: &mut LaunchArgs<'a>, t: &'a mut DeviceTensor) {
    match &mut t.buf {
        Buf::F32(s) => b.arg(s),
        Buf::Bits(s) => b.arg(s),
    };
}

/// A null device pointer, for absent optional tensors.
static NULL: u64 = 0;

impl CudaContext {
    /// Opens device `ordinal`: loads the driver, creates (retains) its
    /// primary context and a stream.
    ///
    /// Errors: [`CudaError::NoCuda`] when the driver library is absent,
    /// [`CudaError::NoDevice`] when there is no such device.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        let count = device_count()?;
        if ordinal >= count {
            return Err(CudaError::NoDevice { ordinal, count });
        }
        let ctx = cudarc::driver::CudaContext::new(ordinal)
            .map_err(|e| CudaError::driver("cuDevicePrimaryCtxRetain", e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| CudaError::driver("cuDeviceGetAttribute", e))?;
        let name = ctx
            .name()
            .map_err(|e| CudaError::driver("cuDeviceGetName", e))?;
        let mut driver_version = 0;
        // SAFETY: the driver is loaded and initialised (device_count); the
        // pointer is to a live local.
        let r = unsafe { sys::cuDriverGetVersion(&mut driver_version) };
        r.result()
            .map_err(|e| CudaError::driver("cuDriverGetVersion", e))?;
        // The context's default stream: one stream, so cudarc needs no
        // cross-stream event tracking per launch.
        let stream = ctx.default_stream();
        Ok(CudaContext {
            ctx,
            stream,
            info: DeviceInfo {
                ordinal,
                name,
                arch: (major * 10 + minor) as u32,
                driver_version,
            },
            modules: Mutex::new(HashMap::new()),
            disk: DiskCache::from_env(),
        })
    }

    /// The device this context runs on.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Uses `cache` as the on-disk module cache (`None`: memory only).
    pub fn with_disk_cache(mut self, cache: Option<DiskCache>) -> Self {
        self.disk = cache;
        self
    }

    /// Waits for all work queued on the context's stream.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream
            .synchronize()
            .map_err(|e| CudaError::driver("cuStreamSynchronize", e))
    }

    /// Copies a host slice to a new device tensor (of `T`'s storage type).
    pub fn upload<T: Element>(&self, host: &[T]) -> Result<DeviceTensor, CudaError> {
        let buf = match T::DTYPE {
            DType::F32 => {
                let v: Vec<f32> = host.iter().map(|x| x.to_f32()).collect();
                Buf::F32(self.htod(&v)?)
            }
            DType::F16 => {
                let v: Vec<u16> = host
                    .iter()
                    .map(|x| f16::from_f32(x.to_f32()).to_bits())
                    .collect();
                Buf::Bits(self.htod(&v)?)
            }
            DType::BF16 => {
                let v: Vec<u16> = host
                    .iter()
                    .map(|x| bf16::from_f32(x.to_f32()).to_bits())
                    .collect();
                Buf::Bits(self.htod(&v)?)
            }
        };
        Ok(DeviceTensor {
            dtype: T::DTYPE,
            buf,
        })
    }

    fn htod<R: cudarc::driver::DeviceRepr>(&self, v: &[R]) -> Result<CudaSlice<R>, CudaError> {
        let s = self
            .stream
            .clone_htod(v)
            .map_err(|e| CudaError::driver("cuMemcpyHtoDAsync", e))?;
        // The host staging vector dies with this call: wait for the copy.
        self.synchronize()?;
        Ok(s)
    }

    /// A new zero-filled device tensor.
    pub fn zeros(&self, dtype: DType, len: usize) -> Result<DeviceTensor, CudaError> {
        let buf = match dtype {
            DType::F32 => Buf::F32(
                self.stream
                    .alloc_zeros(len)
                    .map_err(|e| CudaError::driver("cuMemAlloc", e))?,
            ),
            DType::F16 | DType::BF16 => Buf::Bits(
                self.stream
                    .alloc_zeros(len)
                    .map_err(|e| CudaError::driver("cuMemAlloc", e))?,
            ),
        };
        Ok(DeviceTensor { dtype, buf })
    }

    /// Copies a device tensor back into `host` (same storage type and length).
    pub fn download<T: Element>(&self, t: &DeviceTensor, host: &mut [T]) -> Result<(), CudaError> {
        check_tensor("host buffer", t, T::DTYPE, host.len())?;
        let fail = |e| CudaError::driver("cuMemcpyDtoHAsync", e);
        match (&t.buf, T::DTYPE) {
            (Buf::F32(s), _) => {
                let v = self.stream.clone_dtoh(s).map_err(fail)?;
                self.synchronize()?;
                for (h, x) in host.iter_mut().zip(v) {
                    *h = T::from_f32(x);
                }
            }
            (Buf::Bits(s), dt) => {
                let v = self.stream.clone_dtoh(s).map_err(fail)?;
                self.synchronize()?;
                for (h, b) in host.iter_mut().zip(v) {
                    let x = if dt == DType::F16 {
                        f16::from_bits(b).to_f32()
                    } else {
                        bf16::from_bits(b).to_f32()
                    };
                    *h = T::from_f32(x);
                }
            }
        }
        Ok(())
    }

    /// The kernels of `spec`: from memory, else from the disk cache, else
    /// compiled now (and stored in both).
    fn kernels(&self, spec: &KernelSpec) -> Result<Arc<Kernels>, CudaError> {
        let mut map = self.modules.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(k) = map.get(spec) {
            return Ok(k.clone());
        }
        let image = self.image(spec)?;
        let ptx = match image.kind {
            ImageKind::Cubin => cudarc::nvrtc::Ptx::from_binary(image.bytes),
            ImageKind::Ptx => {
                cudarc::nvrtc::Ptx::from_src(String::from_utf8_lossy(&image.bytes).into_owned())
            }
        };
        let module = self
            .ctx
            .load_module(ptx)
            .map_err(|e| CudaError::driver("cuModuleLoadData", e))?;
        let f = |name: &'static str| {
            module
                .load_function(name)
                .map_err(|e| CudaError::driver("cuModuleGetFunction", e))
        };
        let k = Arc::new(Kernels {
            fwd: f(ENTRY_FORWARD)?,
            bwd_q: f(ENTRY_BACKWARD_Q)?,
            bwd_kv: f(ENTRY_BACKWARD_KV)?,
            reduce: f(ENTRY_RPB_REDUCE)?,
        });
        map.insert(*spec, k.clone());
        Ok(k)
    }

    fn image(&self, spec: &KernelSpec) -> Result<Image, CudaError> {
        let supported = nvrtc::supported_archs()?;
        let target = nvrtc::pick_target(self.info.arch, &supported).ok_or_else(|| {
            CudaError::Unsupported {
                what: format!(
                    "sm_{}: the loaded NVRTC supports only {supported:?}",
                    self.info.arch
                ),
            }
        })?;
        let source = spec.source();
        let options = nvrtc::options_for(target);
        let key = cache_key(
            &source,
            &options,
            self.info.arch,
            self.info.driver_version,
            nvrtc::version()?,
        );
        if let Some(img) = self.disk.as_ref().and_then(|d| d.load(&key)) {
            return Ok(img);
        }
        let img = nvrtc::compile(&source, &spec.name(), &options)?;
        if let Some(d) = &self.disk {
            d.store(&key, &img);
        }
        Ok(img)
    }

    /// Compiles (or loads from the caches) the kernels `p` needs in storage
    /// type `dtype`, so that a later call does not pay for it (benchmarks).
    pub fn prepare(&self, p: &Problem, dtype: DType, rpb: bool) -> Result<(), CudaError> {
        self.kernels(&KernelSpec::new(p, dtype, rpb)?).map(|_| ())
    }

    fn plan(
        &self,
        p: &Problem,
        dtype: DType,
        rpb: bool,
    ) -> Result<(Arc<Kernels>, Geometry, NaParams), CudaError> {
        let spec = KernelSpec::new(p, dtype, rpb)?;
        let g = geometry(p, &spec)?;
        let params = NaParams::new(p, &g)?;
        Ok((self.kernels(&spec)?, g, params))
    }

    fn config(g: &Geometry) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (g.blocks, 1, 1),
            block_dim: (g.threads, 1, 1),
            shared_mem_bytes: 0,
        }
    }

    /// Forward pass on device tensors: writes `out` (`[batch, *spatial, heads,
    /// head_dim_v]`) and, if given, `lse` (`[batch, *spatial, heads]`, f32).
    /// Asynchronous on the context's stream.
    ///
    /// Every tensor but `lse` has the storage type of `query`.
    pub fn forward(
        &self,
        p: &Problem,
        x: DeviceInputs<'_>,
        out: &mut DeviceTensor,
        lse: Option<&mut DeviceTensor>,
    ) -> Result<(), CudaError> {
        let dt = check_forward(p, &x, out, lse.as_deref())?;
        let (k, g, params) = self.plan(p, dt, x.rpb.is_some())?;
        let mut b = self.stream.launch_builder(&k.fwd);
        b.arg(&params);
        arg(&mut b, x.query);
        arg(&mut b, x.key);
        arg(&mut b, x.value);
        match x.rpb {
            Some(r) => arg(&mut b, r),
            None => {
                b.arg(&NULL);
            }
        }
        arg_mut(&mut b, out);
        match lse {
            Some(l) => arg_mut(&mut b, l),
            None => {
                b.arg(&NULL);
            }
        }
        // SAFETY: the arguments are, in order, the parameter block and the
        // device pointers of na_fwd's signature; every tensor's dtype and
        // length were checked against the problem above, the grid and
        // parameters come from the same problem (geometry, NaParams::new),
        // and the kernel indexes only inside those lengths.
        unsafe { b.launch(Self::config(&g)) }.map_err(|e| CudaError::launch(ENTRY_FORWARD, e))?;
        Ok(())
    }

    /// Backward pass on device tensors: writes `d_query`, `d_key`, `d_value`
    /// and, when asked for (and `rpb` was given), `d_rpb`. Deterministic: no
    /// atomics, fixed reduction orders. Asynchronous on the context's stream.
    pub fn backward(
        &self,
        p: &Problem,
        x: DeviceInputs<'_>,
        s: DeviceSaved<'_>,
        g: DeviceGrads<'_>,
    ) -> Result<(), CudaError> {
        let dt = check_backward(p, &x, &s, &g)?;
        let (k, geo, params) = self.plan(p, dt, x.rpb.is_some())?;
        let cfg = Self::config(&geo);
        let rpb_part = p.rpb_per_head() * geo.blocks as usize * crate::spec::WARPS as usize;
        if g.d_rpb.is_some() && rpb_part > MAX_RPB_PARTIAL {
            return Err(CudaError::Unsupported {
                what: format!(
                    "d_rpb needs {rpb_part} partial sums (limit {MAX_RPB_PARTIAL}); \
                     split the batch"
                ),
            });
        }
        let mut delta = self.zeros(DType::F32, p.lse_len())?;
        let mut part = match g.d_rpb {
            Some(_) => Some(self.zeros(DType::F32, rpb_part)?),
            None => None,
        };

        let mut b = self.stream.launch_builder(&k.bwd_q);
        b.arg(&params);
        arg(&mut b, x.query);
        arg(&mut b, x.key);
        arg(&mut b, x.value);
        match x.rpb {
            Some(r) => arg(&mut b, r),
            None => {
                b.arg(&NULL);
            }
        }
        arg(&mut b, s.out);
        arg(&mut b, s.d_out);
        arg(&mut b, s.lse);
        arg_mut(&mut b, g.d_query);
        arg_mut(&mut b, &mut delta);
        match part.as_mut() {
            Some(t) => arg_mut(&mut b, t),
            None => {
                b.arg(&NULL);
            }
        }
        // SAFETY: arguments follow na_bwd_q's signature; tensors were checked
        // against the problem; `delta` holds lse_len floats and `part`
        // blocks * WARPS * rpb_per_head floats, which is what the kernel
        // indexes with this grid.
        unsafe { b.launch(cfg) }.map_err(|e| CudaError::launch(ENTRY_BACKWARD_Q, e))?;

        let mut b = self.stream.launch_builder(&k.bwd_kv);
        b.arg(&params);
        arg(&mut b, x.query);
        arg(&mut b, x.key);
        arg(&mut b, x.value);
        match x.rpb {
            Some(r) => arg(&mut b, r),
            None => {
                b.arg(&NULL);
            }
        }
        arg(&mut b, s.d_out);
        arg(&mut b, s.lse);
        arg(&mut b, &delta);
        arg_mut(&mut b, g.d_key);
        arg_mut(&mut b, g.d_value);
        // SAFETY: arguments follow na_bwd_kv's signature; tensors were checked
        // against the problem and `delta` was written by pass 1 on the same
        // stream.
        unsafe { b.launch(cfg) }.map_err(|e| CudaError::launch(ENTRY_BACKWARD_KV, e))?;

        if let (Some(d_rpb), Some(part)) = (g.d_rpb, part.as_ref()) {
            let total = p.rpb_len();
            let cfg = LaunchConfig {
                grid_dim: ((total as u32).div_ceil(REDUCE_THREADS), 1, 1),
                block_dim: (REDUCE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            let (batch, heads, tiles) = (params.batch, params.heads, geo.tiles as i32);
            let mut b = self.stream.launch_builder(&k.reduce);
            arg(&mut b, part);
            b.arg(&batch);
            b.arg(&heads);
            b.arg(&tiles);
            arg_mut(&mut b, d_rpb);
            // SAFETY: arguments follow na_rpb_reduce's signature; `part` was
            // filled by pass 1 with (batch, heads, tiles, WARPS,
            // rpb_per_head) floats and `d_rpb` holds heads * rpb_per_head
            // elements (checked); threads past the end return.
            unsafe { b.launch(cfg) }.map_err(|e| CudaError::launch(ENTRY_RPB_REDUCE, e))?;
        }
        // The temporaries are freed when dropped; the driver orders the free
        // after the queued kernels.
        Ok(())
    }

    /// Times `f` with CUDA events on the context's stream: `warmup` untimed
    /// runs, then `runs` timed ones; returns each run's milliseconds. The
    /// clock stops only after the stream has finished the run.
    pub fn time_ms<F>(&self, warmup: usize, runs: usize, mut f: F) -> Result<Vec<f64>, CudaError>
    where
        F: FnMut() -> Result<(), CudaError>,
    {
        let ev = || {
            self.ctx
                .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
                .map_err(|e| CudaError::driver("cuEventCreate", e))
        };
        let (start, end) = (ev()?, ev()?);
        for _ in 0..warmup {
            f()?;
        }
        self.synchronize()?;
        let mut out = Vec::with_capacity(runs);
        for _ in 0..runs {
            start
                .record(&self.stream)
                .map_err(|e| CudaError::driver("cuEventRecord", e))?;
            f()?;
            end.record(&self.stream)
                .map_err(|e| CudaError::driver("cuEventRecord", e))?;
            end.synchronize()
                .map_err(|e| CudaError::driver("cuEventSynchronize", e))?;
            let ms = start
                .elapsed_ms(&end)
                .map_err(|e| CudaError::driver("cuEventElapsedTime", e))?;
            out.push(ms as f64);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_driver_every_entry_is_a_typed_error() {
        if driver_present() {
            eprintln!("skipped: a CUDA driver is present on this machine");
            return;
        }
        assert!(matches!(device_count(), Err(CudaError::NoCuda { .. })));
        let e = CudaContext::new(0).unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        assert!(e.to_string().contains("libcuda"), "{e}");
    }

    #[test]
    fn contexts_and_errors_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<CudaContext>();
        send_sync::<DeviceTensor>();
        send_sync::<CudaError>();
    }

    #[test]
    fn driver_versions_print_as_major_minor() {
        let i = DeviceInfo {
            ordinal: 0,
            name: "x".into(),
            arch: 90,
            driver_version: 13000,
        };
        assert_eq!(i.driver(), "13.0");
        assert_eq!(
            DeviceInfo {
                driver_version: 12080,
                ..i
            }
            .driver(),
            "12.8"
        );
    }
}
