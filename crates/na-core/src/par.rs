//! Parallelism as a value: [`Par::Seq`] or [`Par::Rayon`].

/// How a kernel may use threads.
///
/// Results never depend on the choice: every kernel splits work into the same
/// fixed blocks and reduces partial sums in the same order, whatever runs them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Par {
    /// On the calling thread.
    #[default]
    Seq,
    /// On a rayon pool of this many threads: the current pool when it has
    /// exactly that many, else a pool built for the call.
    #[cfg(feature = "rayon")]
    Rayon(core::num::NonZeroUsize),
}

impl Par {
    /// `n` threads: `0` means every core of the current rayon pool, `1`
    /// means [`Par::Seq`].
    #[cfg(feature = "rayon")]
    pub fn rayon(n: usize) -> Self {
        let n = if n == 0 {
            rayon::current_num_threads()
        } else {
            n
        };
        match core::num::NonZeroUsize::new(n) {
            Some(n) if n.get() > 1 => Par::Rayon(n),
            _ => Par::Seq,
        }
    }

    /// The number of threads this value asks for.
    pub fn threads(&self) -> usize {
        match self {
            Par::Seq => 1,
            #[cfg(feature = "rayon")]
            Par::Rayon(n) => n.get(),
        }
    }

    /// Runs `f` inside a rayon pool of the requested size.
    #[cfg(feature = "rayon")]
    pub(crate) fn install<R: Send>(n: core::num::NonZeroUsize, f: impl FnOnce() -> R + Send) -> R {
        if rayon::current_num_threads() == n.get() {
            return f();
        }
        match rayon::ThreadPoolBuilder::new().num_threads(n.get()).build() {
            Ok(pool) => pool.install(f),
            // Could not start threads: the current pool computes the same result.
            Err(_) => f(),
        }
    }
}
