//! `y [m, n] = x [m, k] · w [n, k]ᵀ` (a linear layer, row-major like the
//! models) through the `gemm` crate and through `faer`, at the shapes of
//! nat_mini's layers at 224² and of the Fashion model's, on a rayon pool of
//! `THREADS` threads (first argument, default 2). Prints one JSON object per
//! shape with the best-of-5 GFLOP/s of each crate; `bench/results/
//! gemm-shapes.json` holds a run.

use std::time::Instant;

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2);
    // (m, k, n): nat_mini levels 0-3 (qkv, proj, fc1, fc2), the Fashion
    // model's micro-batch of 16 at 14x14 and 7x7, and a square reference.
    let shapes = [
        (3136usize, 64usize, 192usize),
        (3136, 64, 64),
        (3136, 64, 256),
        (3136, 256, 64),
        (784, 128, 384),
        (784, 128, 512),
        (784, 512, 128),
        (196, 256, 1024),
        (196, 1024, 256),
        (49, 512, 2048),
        (49, 2048, 512),
        (3136, 32, 96),
        (3136, 128, 32),
        (784, 64, 256),
        (1024, 1024, 1024),
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    pool.install(|| {
        for &(m, k, n) in &shapes {
            let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 * 0.1 - 0.8).collect();
            let w: Vec<f32> = (0..n * k).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
            let mut c = vec![0.0f32; m * n];
            let flop = 2.0 * (m * n * k) as f64;
            let iters = ((2e9 / flop) as usize).clamp(5, 2000);
            let time = |f: &mut dyn FnMut()| {
                for _ in 0..3 {
                    f();
                }
                let mut best = f64::INFINITY;
                for _ in 0..5 {
                    let t = Instant::now();
                    for _ in 0..iters {
                        f();
                    }
                    best = best.min(t.elapsed().as_secs_f64() / iters as f64);
                }
                best
            };
            let par = if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            };
            let tg = time(&mut || {
                // SAFETY: c is m×n (row stride n), a is m×k (row stride k), w
                // is n×k read as the k×n matrix wᵀ (row stride 1, column
                // stride k); all outlive the call and c aliases neither.
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        w.as_ptr(),
                        k as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    )
                }
            });
            let am = faer::MatRef::from_row_major_slice(&a, m, k);
            let wm = faer::MatRef::from_row_major_slice(&w, n, k);
            let fpar = if threads > 1 {
                faer::Par::rayon(threads)
            } else {
                faer::Par::Seq
            };
            let tf = time(&mut || {
                let cm = faer::MatMut::from_row_major_slice_mut(&mut c, m, n);
                faer::linalg::matmul::matmul(
                    cm,
                    faer::Accum::Replace,
                    am,
                    wm.transpose(),
                    1.0f32,
                    fpar,
                );
            });
            println!(
                "{{\"m\": {m}, \"k\": {k}, \"n\": {n}, \"threads\": {threads}, \"gemm_gflops\": {:.1}, \"faer_gflops\": {:.1}}}",
                flop / tg / 1e9,
                flop / tf / 1e9
            );
        }
    });
}
