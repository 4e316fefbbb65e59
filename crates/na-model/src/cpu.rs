//! The CPU backend: every operation is one call into [`crate::ops`] (the op
//! set shared with training) on buffers recycled from a pool, run on the
//! backend's own rayon pool.

use core::ops::Range;
use std::sync::{Arc, Mutex};

use crate::backend::{Backend, Backward, Tensor};
use crate::error::{ModelError, Result};
use crate::model::Model;
use crate::ops::{self, layout, shape_err, Act, Attention, Conv2d, LayerNorm, Linear, Weights};

/// Buffers kept for reuse at most.
const POOL_MAX: usize = 48;

/// The CPU backend. Tensors live in `Vec<f32>`.
///
/// Buffers handed back with [`Backend::recycle`] are kept (up to
/// `POOL_MAX`) and reused by later operations, so a forward pass in steady
/// state does not map, fault in and zero fresh pages for every activation.
/// The backend owns a rayon pool of its thread count, built once
/// ([`Cpu::install`]), or runs on the caller's pool ([`Cpu::current`]).
#[derive(Clone)]
pub struct Cpu {
    threads: usize,
    rayon: Option<Arc<rayon::ThreadPool>>,
    pool: Arc<Mutex<Vec<Vec<f32>>>>,
}

impl core::fmt::Debug for Cpu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Cpu {{ threads: {} }}", self.threads)
    }
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu::new(0)
    }
}

impl Cpu {
    /// A CPU backend using `threads` threads (0: one per logical core).
    pub fn new(threads: usize) -> Self {
        let threads = if threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            threads
        };
        let rayon = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .ok()
            .map(Arc::new);
        Cpu {
            threads,
            rayon,
            pool: Arc::default(),
        }
    }

    /// A CPU backend that runs on whatever rayon pool calls it (e.g. one
    /// single-threaded worker of a training run).
    pub fn current() -> Self {
        Cpu {
            threads: rayon::current_num_threads(),
            rayon: None,
            pool: Arc::default(),
        }
    }

    /// Threads used by GEMM and attention.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on the backend's rayon pool (the caller's for
    /// [`Cpu::current`]).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.rayon {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }

    /// A buffer of `n` values whose contents the caller overwrites in full:
    /// a recycled buffer (the smallest large enough) keeps its old values.
    fn buffer(&self, n: usize) -> Vec<f32> {
        let reused = self.pool.lock().ok().and_then(|mut pool| {
            let i = (0..pool.len())
                .filter(|&i| pool[i].capacity() >= n)
                .min_by_key(|&i| pool[i].capacity())?;
            Some(pool.swap_remove(i))
        });
        match reused {
            Some(mut v) => {
                v.truncate(n);
                v.resize(n, 0.0);
                v
            }
            None => vec![0.0; n],
        }
    }

    fn err(&self, reason: String) -> ModelError {
        ModelError::Backend {
            backend: self.name(),
            reason,
        }
    }

    fn shape4(&self, x: &Tensor<Self>, what: &str) -> Result<[usize; 4]> {
        match x.shape[..] {
            [a, b, c, d] => Ok([a, b, c, d]),
            _ => Err(self.err(format!("{what}: expected a 4-d tensor, got {:?}", x.shape))),
        }
    }

    fn bhw(&self, x: &Tensor<Self>, what: &str) -> Result<([usize; 3], usize)> {
        let [b, h, w, c] = self.shape4(x, what)?;
        Ok(([b, h, w], c))
    }

    /// A new tensor of `shape` whose buffer `fill` writes in full.
    fn make(
        &self,
        shape: Vec<usize>,
        fill: impl FnOnce(&mut [f32]) -> Result<()>,
    ) -> Result<Tensor<Self>> {
        let n = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| self.err(format!("shape {shape:?} overflows")))?;
        let mut buf = self.buffer(n);
        match fill(&mut buf) {
            Ok(()) => Ok(Tensor { shape, buf }),
            Err(e) => {
                self.recycle(Tensor { shape, buf });
                Err(e)
            }
        }
    }

    fn with_last(shape: &[usize], n: usize) -> Vec<usize> {
        let mut s = shape.to_vec();
        if let Some(l) = s.last_mut() {
            *l = n;
        }
        s
    }
}

fn host(x: Vec<f32>, shape: Vec<usize>) -> Tensor<Cpu> {
    debug_assert_eq!(shape.iter().product::<usize>(), x.len());
    Tensor { shape, buf: x }
}

/// A model's parameters on the CPU: the tensors as loaded, each at its
/// range of the flat layout (no copy at load), or one flat buffer (a model
/// built from a [`crate::ParamSet`], e.g. during training).
#[derive(Clone, Debug, Default)]
pub struct CpuParams {
    /// Where each part starts in the flat layout (ascending, first 0).
    starts: Vec<usize>,
    /// The parts, contiguous in the layout.
    parts: Vec<Vec<f32>>,
    len: usize,
}

impl CpuParams {
    /// The parameters from `parts` covering `0..len` in order without gaps.
    pub fn new(len: usize, parts: Vec<(Range<usize>, Vec<f32>)>) -> Result<Self> {
        let mut next = 0;
        let (mut starts, mut bufs) = (
            Vec::with_capacity(parts.len()),
            Vec::with_capacity(parts.len()),
        );
        for (r, v) in parts {
            if r.start != next || r.len() != v.len() {
                return Err(ModelError::Backend {
                    backend: "cpu".into(),
                    reason: format!(
                        "parameters: a part at {r:?} of {} values does not continue the layout at {next}",
                        v.len()
                    ),
                });
            }
            next = r.end;
            if !v.is_empty() {
                starts.push(r.start);
                bufs.push(v);
            }
        }
        if next != len {
            return Err(ModelError::Backend {
                backend: "cpu".into(),
                reason: format!("parameters: the parts cover {next} of {len} values"),
            });
        }
        Ok(CpuParams {
            starts,
            parts: bufs,
            len,
        })
    }

    /// One flat buffer of every value.
    pub fn flat(data: Vec<f32>) -> Self {
        let len = data.len();
        CpuParams {
            starts: if len > 0 { vec![0] } else { vec![] },
            parts: if len > 0 { vec![data] } else { vec![] },
            len,
        }
    }

    /// The single flat buffer, when the parameters are stored as one (for
    /// an optimiser step in place).
    pub fn as_flat_mut(&mut self) -> Option<&mut [f32]> {
        match &mut self.parts[..] {
            [one] if one.len() == self.len => Some(one),
            _ => None,
        }
    }
}

impl Weights for CpuParams {
    fn len(&self) -> usize {
        self.len
    }

    fn get(&self, r: &Range<usize>) -> &[f32] {
        // The part that starts at or before r.start.
        let i = self.starts.partition_point(|&s| s <= r.start);
        let Some(i) = i.checked_sub(1) else {
            return &[];
        };
        let off = r.start - self.starts[i];
        <[f32]>::get(&self.parts[i], off..off + r.len()).unwrap_or(&[])
    }
}

impl Backend for Cpu {
    type Buf = Vec<f32>;
    type Params = CpuParams;

    fn upload_params(&self, len: usize, parts: Vec<(Range<usize>, Vec<f32>)>) -> Result<CpuParams> {
        CpuParams::new(len, parts)
    }

    fn params_len(&self, p: &CpuParams) -> usize {
        p.len
    }

    fn name(&self) -> String {
        format!("cpu ({} threads)", self.threads)
    }

    fn upload(&self, shape: &[usize], data: &[f32]) -> Result<Tensor<Self>> {
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(data.len()) {
            return Err(self.err(format!(
                "upload: shape {shape:?} does not hold {} elements",
                data.len()
            )));
        }
        Ok(host(data.to_vec(), shape.to_vec()))
    }

    fn download(&self, x: &Tensor<Self>) -> Result<Vec<f32>> {
        Ok(x.buf.clone())
    }

    fn recycle(&self, x: Tensor<Self>) {
        if x.buf.capacity() < 1024 {
            return;
        }
        if let Ok(mut pool) = self.pool.lock() {
            if pool.len() < POOL_MAX {
                pool.push(x.buf);
            } else if let Some(i) = (0..pool.len()).min_by_key(|&i| pool[i].capacity()) {
                // Keep the larger buffers.
                if pool[i].capacity() < x.buf.capacity() {
                    pool[i] = x.buf;
                }
            }
        }
    }

    fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        Cpu::install(self, f)
    }

    fn copy(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        self.make(x.shape.clone(), |o| {
            o.copy_from_slice(&x.buf);
            Ok(())
        })
    }

    fn nchw_to_nhwc(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        let [b, c, h, w] = self.shape4(x, "nchw_to_nhwc")?;
        self.make(vec![b, h, w, c], |o| {
            layout::nchw_to_nhwc(&x.buf, [b, c, h, w], o)
        })
    }

    fn nhwc_to_nchw(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        let [b, h, w, c] = self.shape4(x, "nhwc_to_nchw")?;
        self.make(vec![b, c, h, w], |o| {
            layout::nhwc_to_nchw(&x.buf, [b, h, w, c], o)
        })
    }

    fn conv2d(&self, p: &CpuParams, l: &Conv2d, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        let (dims, c) = self.bhw(x, "conv2d input")?;
        if c != l.cin {
            return Err(self.err(format!(
                "conv2d: input {:?} for {} input channels",
                x.shape, l.cin
            )));
        }
        let od = l.check(x.numel(), dims, p)?;
        let rows = od[0] * od[1] * od[2];
        let cols = self.make(vec![rows, l.kk()], |_| Ok(()))?;
        let mut cols = cols;
        let y = self.make(vec![od[0], od[1], od[2], l.cout], |y| {
            l.forward(p, &x.buf, dims, y, &mut cols.buf).map(|_| ())
        });
        self.recycle(cols);
        y
    }

    fn linear(
        &self,
        p: &CpuParams,
        l: &Linear,
        x: &Tensor<Self>,
        act: Act,
        keep_pre: bool,
    ) -> Result<(Tensor<Self>, Option<Tensor<Self>>)> {
        if x.last_dim() != l.din || x.shape.is_empty() {
            return Err(self.err(format!(
                "linear: input {:?} for {} features",
                x.shape, l.din
            )));
        }
        let shape = Self::with_last(&x.shape, l.dout);
        if keep_pre {
            let mut pre = self.make(shape.clone(), |_| Ok(()))?;
            let y = self.make(shape, |y| l.forward(p, &x.buf, act, y, Some(&mut pre.buf)))?;
            Ok((y, Some(pre)))
        } else {
            Ok((
                self.make(shape, |y| l.forward(p, &x.buf, act, y, None))?,
                None,
            ))
        }
    }

    fn linear_residual(
        &self,
        p: &CpuParams,
        l: &Linear,
        x: &Tensor<Self>,
        gamma: Option<&Range<usize>>,
        resid: &mut Tensor<Self>,
        keep: bool,
    ) -> Result<Option<Tensor<Self>>> {
        if x.last_dim() != l.din
            || x.shape.is_empty()
            || resid.shape != Self::with_last(&x.shape, l.dout)
        {
            return Err(self.err(format!(
                "linear_residual: input {:?}, residual {:?} for {} -> {} features",
                x.shape, resid.shape, l.din, l.dout
            )));
        }
        let tmp = self.make(resid.shape.clone(), |t| {
            l.forward_residual(p, &x.buf, gamma, &mut resid.buf, t)
        })?;
        if keep {
            Ok(Some(tmp))
        } else {
            self.recycle(tmp);
            Ok(None)
        }
    }

    fn layer_norm(
        &self,
        p: &CpuParams,
        l: &LayerNorm,
        x: &Tensor<Self>,
        keep_stats: bool,
    ) -> Result<(Tensor<Self>, Option<Tensor<Self>>)> {
        if x.last_dim() != l.c {
            return Err(self.err(format!(
                "layer_norm: input {:?} for {} channels",
                x.shape, l.c
            )));
        }
        if keep_stats {
            let rows = x.numel() / l.c.max(1);
            let mut st = self.make(vec![rows, 2], |_| Ok(()))?;
            let y = self.make(x.shape.clone(), |y| {
                l.forward(p, &x.buf, y, Some(&mut st.buf))
            })?;
            Ok((y, Some(st)))
        } else {
            Ok((
                self.make(x.shape.clone(), |y| l.forward(p, &x.buf, y, None))?,
                None,
            ))
        }
    }

    fn pad_hw(&self, x: &Tensor<Self>, hp: usize, wp: usize) -> Result<Tensor<Self>> {
        let (d, c) = self.bhw(x, "pad_hw")?;
        self.make(vec![d[0], hp, wp, c], |o| {
            layout::pad_hw(&x.buf, d, c, [hp, wp], o)
        })
    }

    fn crop_hw(&self, x: &Tensor<Self>, hc: usize, wc: usize) -> Result<Tensor<Self>> {
        let (d, c) = self.bhw(x, "crop_hw")?;
        if hc > d[1] || wc > d[2] {
            return Err(self.err(format!(
                "crop_hw: {}x{} cannot be cropped to {hc}x{wc}",
                d[1], d[2]
            )));
        }
        self.make(vec![d[0], hc, wc, c], |o| {
            layout::crop_hw(&x.buf, d, c, [hc, wc], o)
        })
    }

    fn attention(
        &self,
        p: &CpuParams,
        l: &Attention,
        qkv: &Tensor<Self>,
        keep_lse: bool,
    ) -> Result<(Tensor<Self>, Option<Tensor<Self>>)> {
        let (d, c3) = self.bhw(qkv, "neighborhood_attention")?;
        let (c, pr) = l.check(qkv.numel(), d, p)?;
        debug_assert_eq!(3 * c, c3);
        let mut scratch = self.make(vec![3 * pr.qk_len()], |_| Ok(()))?;
        let mut lse = if keep_lse {
            Some(self.make(vec![d[0], d[1], d[2], l.heads], |_| Ok(()))?)
        } else {
            None
        };
        let out = self.make(vec![d[0], d[1], d[2], c], |o| {
            l.forward(
                p,
                &qkv.buf,
                d,
                o,
                lse.as_mut().map(|t| &mut t.buf[..]),
                &mut scratch.buf,
            )
        });
        self.recycle(scratch);
        Ok((out?, lse))
    }

    fn patch_merge(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        let (d, c) = self.bhw(x, "patch_merge")?;
        let shape = vec![d[0], d[1].div_ceil(2), d[2].div_ceil(2), 4 * c];
        self.make(shape, |o| layout::patch_merge(&x.buf, d, c, o).map(|_| ()))
    }

    fn mean_tokens(&self, x: &Tensor<Self>) -> Result<Tensor<Self>> {
        if x.shape.len() < 2 {
            return Err(self.err(format!("mean_tokens: shape {:?}", x.shape)));
        }
        let (b, c) = (x.shape[0], x.last_dim());
        self.make(vec![b, c], |o| layout::mean_tokens(&x.buf, b, c, o))
    }
}

impl Backward for Cpu {
    fn zeros(&self, shape: &[usize]) -> Result<Tensor<Self>> {
        self.make(shape.to_vec(), |o| {
            o.fill(0.0);
            Ok(())
        })
    }

    fn add(&self, x: &mut Tensor<Self>, y: &Tensor<Self>) -> Result<()> {
        ops::residual::add(&mut x.buf, &y.buf)
    }

    fn conv2d_backward(
        &self,
        p: &CpuParams,
        l: &Conv2d,
        x: &Tensor<Self>,
        dy: &Tensor<Self>,
        g: &mut Tensor<Self>,
        need_dx: bool,
    ) -> Result<Option<Tensor<Self>>> {
        let (d, _) = self.bhw(x, "conv2d input")?;
        let dx = l.backward(p, &x.buf, d, &dy.buf, &mut g.buf, need_dx)?;
        Ok(dx.map(|v| host(v, x.shape.clone())))
    }

    fn linear_backward(
        &self,
        p: &CpuParams,
        l: &Linear,
        x: &Tensor<Self>,
        dy: &Tensor<Self>,
        g: &mut Tensor<Self>,
        need_dx: bool,
    ) -> Result<Option<Tensor<Self>>> {
        if need_dx {
            let dx = self.make(x.shape.clone(), |dx| {
                l.backward(p, &x.buf, &dy.buf, &mut g.buf, Some(dx))
            })?;
            Ok(Some(dx))
        } else {
            l.backward(p, &x.buf, &dy.buf, &mut g.buf, None)?;
            Ok(None)
        }
    }

    fn gelu_backward(&self, pre: &Tensor<Self>, dy: &mut Tensor<Self>) -> Result<()> {
        ops::act::gelu_backward(&pre.buf, &mut dy.buf)
    }

    fn scale_backward(
        &self,
        p: &CpuParams,
        gamma: &Range<usize>,
        y: &Tensor<Self>,
        dout: &Tensor<Self>,
        g: &mut Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        let c = y.last_dim();
        ops::check_slot("add_scaled", "γ", gamma, c, p)?;
        let dy = ops::residual::add_scaled_backward(
            &y.buf,
            &dout.buf,
            Some(p.get(gamma)),
            Some(&mut g.buf[gamma.clone()]),
            c,
        )?;
        Ok(host(dy, y.shape.clone()))
    }

    fn layer_norm_backward(
        &self,
        p: &CpuParams,
        l: &LayerNorm,
        x: &Tensor<Self>,
        stats: &Tensor<Self>,
        dy: &Tensor<Self>,
        g: &mut Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        let dx = l.backward(p, &x.buf, &stats.buf, &dy.buf, &mut g.buf)?;
        Ok(host(dx, x.shape.clone()))
    }

    fn attention_backward(
        &self,
        p: &CpuParams,
        l: &Attention,
        qkv: &Tensor<Self>,
        out: &Tensor<Self>,
        lse: &Tensor<Self>,
        d_out: &Tensor<Self>,
        g: &mut Tensor<Self>,
    ) -> Result<Tensor<Self>> {
        let (d, _) = self.bhw(qkv, "neighborhood_attention")?;
        let dqkv = l.backward(p, &qkv.buf, d, &out.buf, &lse.buf, &d_out.buf, &mut g.buf)?;
        Ok(host(dqkv, qkv.shape.clone()))
    }

    fn patch_merge_backward(&self, dy: &Tensor<Self>, shape: &[usize]) -> Result<Tensor<Self>> {
        let &[b, h, w, c] = shape else {
            return Err(self.err(format!("patch_merge backward: shape {shape:?}")));
        };
        Ok(host(
            layout::patch_merge_backward(&dy.buf, [b, h, w], c)?,
            shape.to_vec(),
        ))
    }

    fn mean_tokens_backward(&self, dy: &Tensor<Self>, shape: &[usize]) -> Result<Tensor<Self>> {
        if shape.len() < 2 {
            return Err(self.err(format!("mean_tokens backward: shape {shape:?}")));
        }
        let (b, c) = (shape[0], shape[shape.len() - 1]);
        let t = shape[1..shape.len() - 1].iter().product();
        Ok(host(
            layout::mean_tokens_backward(&dy.buf, b, t, c)?,
            shape.to_vec(),
        ))
    }
}

/// The logits of many images `x [n, c, h, w]` (`dims = [c, h, w]`):
/// batches of `batch` images, spread over as many workers as the model's
/// [`Cpu`] has threads, each running whole batches on one core (no
/// synchronisation inside the layers: the fastest way to run a small model
/// on many images). Returns `[n, classes]` (`[n, features]` for a model
/// without classes).
///
/// ```
/// # #[cfg(feature = "fashion")] {
/// use na_model::{fashion, logits_parallel, Cpu};
/// let model = fashion::builtin_model(Cpu::new(2)).unwrap();
/// // Three blank 28x28 images, normalised like the training data, in
/// // batches of 2 (one per worker).
/// let x = vec![fashion::normalize(0); 3 * 28 * 28];
/// let z = logits_parallel(&model, &x, [1, 28, 28], 2).unwrap();
/// assert_eq!(z.len(), 3 * fashion::CLASSES.len());
/// for (a, b) in z[..10].iter().zip(&z[20..30]) {
///     assert!((a - b).abs() < 1e-4); // the same image in another batch
/// }
/// # }
/// ```
pub fn logits_parallel(
    model: &Model<Cpu>,
    x: &[f32],
    dims: [usize; 3],
    batch: usize,
) -> Result<Vec<f32>> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let per: usize = dims.iter().product();
    let k = model
        .config()
        .num_classes
        .max(model.config().num_features());
    if per == 0 || batch == 0 || !x.len().is_multiple_of(per) {
        return Err(shape_err(format!(
            "logits_parallel: {} values are not images of {dims:?} (batch {batch})",
            x.len()
        )));
    }
    let n = x.len() / per;
    let chunks = n.div_ceil(batch);
    let outs: Vec<Mutex<Option<Result<Vec<f32>>>>> =
        (0..chunks).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let workers = model.backend().threads().clamp(1, chunks.max(1));
    let pools = (0..workers)
        .map(|_| rayon::ThreadPoolBuilder::new().num_threads(1).build())
        .collect::<core::result::Result<Vec<_>, _>>()
        .map_err(|e| shape_err(format!("cannot start worker threads: {e}")))?;
    std::thread::scope(|s| {
        for pool in &pools {
            s.spawn(|| {
                let one = Cpu::current();
                pool.install(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= chunks {
                        break;
                    }
                    let (lo, hi) = (i * batch, ((i + 1) * batch).min(n));
                    let r = one
                        .upload(
                            &[hi - lo, dims[0], dims[1], dims[2]],
                            &x[lo * per..hi * per],
                        )
                        .and_then(|t| model.forward_with(&one, &t))
                        .and_then(|y| one.download(&y));
                    *outs[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                })
            });
        }
    });
    let mut all = Vec::with_capacity(n * k);
    for o in outs {
        all.extend(
            o.into_inner()
                .unwrap_or_else(|e| e.into_inner())
                .ok_or_else(|| shape_err("logits_parallel: a batch was not run".into()))??,
        );
    }
    Ok(all)
}
