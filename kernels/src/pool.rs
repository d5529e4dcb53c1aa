//! A spinning fork/join pool for decode-sized work.
//!
//! Generating one token runs ~4 small matrix groups per layer (SmolLM2: 121 per token, 20–300 µs
//! each); rayon's work-stealing join costs 10–25 µs per call there (its idle workers yield and
//! sleep between calls), a fifth of the token. This pool keeps `threads − 1` workers spinning on an
//! epoch counter for a short while after each job (then they park), like llama.cpp's threadpool:
//! posting a job is one atomic store, and the caller works on the job too.
//!
//! Tasks are claimed dynamically (an atomic counter), but each task writes its own rows, so results
//! do not depend on which thread ran what. A second caller while the pool is busy (or a task that
//! calls `run` again) runs its tasks inline: correct, just not parallel.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking.
const SPIN: Duration = Duration::from_micros(200);

struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
}

#[derive(Debug)]
struct Shared {
    epoch: AtomicU64,
    job: AtomicPtr<Job<'static>>,
    /// Workers finished with the current epoch.
    done: AtomicUsize,
    panicked: AtomicBool,
    parked: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

/// A pool of `threads − 1` workers plus the calling thread.
#[derive(Debug)]
pub struct Pool {
    shared: Arc<Shared>,
    workers: usize,
    busy: AtomicBool,
}

impl Pool {
    fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            parked: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = 0;
        for i in 1..threads {
            let s = Arc::clone(&shared);
            let spawned =
                std::thread::Builder::new().name(format!("quantkit-decode-{i}")).spawn(move || worker(&s));
            if spawned.is_ok() {
                workers += 1;
            }
        }
        Pool { shared, workers, busy: AtomicBool::new(false) }
    }

    /// Threads that work on a job (the workers and the caller).
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Run `f(0..tasks)`, spread over the pool; returns when every task has finished.
    pub fn run(&self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.workers == 0 || tasks <= 1 || self.busy.swap(true, Acquire) {
            (0..tasks).for_each(f);
            return;
        }
        let s = &*self.shared;
        let job = Job { f, tasks, next: AtomicUsize::new(0) };
        // SAFETY: the job outlives its use: workers dereference the pointer only for the epoch
        // posted below, and this function returns only after every worker has reported done for
        // that epoch (workers never skip an epoch).
        let ptr = unsafe { std::mem::transmute::<*const Job<'_>, *mut Job<'static>>(&job) };
        s.job.store(ptr, SeqCst);
        s.done.store(0, SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        if s.parked.load(SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| claim(&job)));
        while s.done.load(Acquire) < self.workers {
            std::hint::spin_loop();
        }
        s.job.store(std::ptr::null_mut(), SeqCst);
        self.busy.store(false, Release);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, SeqCst) {
            panic!("a decode-pool task panicked");
        }
    }
}

fn claim(job: &Job<'_>) {
    loop {
        let i = job.next.fetch_add(1, Relaxed);
        if i >= job.tasks {
            return;
        }
        (job.f)(i);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Spin, then park, until a new epoch.
        let start = Instant::now();
        let mut spins = 0u32;
        let e = loop {
            let e = s.epoch.load(Acquire);
            if e != seen {
                break e;
            }
            spins = spins.wrapping_add(1);
            if spins % 256 == 0 && start.elapsed() > SPIN {
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.parked.fetch_add(1, SeqCst);
                while s.epoch.load(SeqCst) == seen {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.parked.fetch_sub(1, SeqCst);
            }
            std::hint::spin_loop();
        };
        seen = e;
        let p = s.job.load(Acquire);
        // SAFETY: the poster keeps the job alive until this worker increments `done`.
        if let Some(job) = unsafe { p.as_ref() } {
            if catch_unwind(AssertUnwindSafe(|| claim(job))).is_err() {
                s.panicked.store(true, SeqCst);
            }
        }
        s.done.fetch_add(1, Release);
    }
}

/// The pool for the current rayon thread count (`--threads`), created on first use; its workers
/// live as long as the process.
pub fn pool() -> &'static Pool {
    static POOLS: OnceLock<Mutex<Vec<&'static Pool>>> = OnceLock::new();
    thread_local! {
        static CACHED: std::cell::Cell<Option<&'static Pool>> = const { std::cell::Cell::new(None) };
    }
    let threads = rayon::current_num_threads().max(1);
    if let Some(p) = CACHED.get().filter(|p| p.threads() == threads) {
        return p;
    }
    let mut all = POOLS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    let p = match all.iter().find(|p| p.threads() == threads) {
        Some(p) => *p,
        None => {
            let p: &'static Pool = Box::leak(Box::new(Pool::new(threads)));
            all.push(p);
            p
        }
    };
    CACHED.set(Some(p));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_whatever_the_threads() {
        for threads in [1, 2, 3] {
            let p = Pool::new(threads);
            for tasks in [0, 1, 2, 7, 100] {
                let hits: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
                for _ in 0..50 {
                    p.run(tasks, &|i| {
                        hits[i].fetch_add(1, Relaxed);
                    });
                }
                assert!(hits.iter().all(|h| h.load(Relaxed) == 50), "{threads} threads, {tasks} tasks");
            }
        }
    }

    #[test]
    fn nested_and_parked_calls_still_finish() {
        let p = Pool::new(2);
        let sum = AtomicUsize::new(0);
        p.run(4, &|i| {
            // Busy pool: runs inline.
            p.run(3, &|j| {
                sum.fetch_add(i * 10 + j, Relaxed);
            });
        });
        assert_eq!(sum.load(Relaxed), (0..4).map(|i| 3 * i * 10 + 3).sum::<usize>());
        // Let the worker park, then wake it.
        std::thread::sleep(Duration::from_millis(5));
        let n = AtomicUsize::new(0);
        p.run(64, &|_| {
            n.fetch_add(1, Relaxed);
        });
        assert_eq!(n.load(Relaxed), 64);
    }

    #[test]
    fn a_panicking_task_is_reported_to_the_caller() {
        let p = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            p.run(16, &|i| {
                if i == 11 {
                    panic!("task 11");
                }
            })
        }));
        assert!(r.is_err());
        // The pool still works afterwards.
        let n = AtomicUsize::new(0);
        p.run(8, &|_| {
            n.fetch_add(1, Relaxed);
        });
        assert_eq!(n.load(Relaxed), 8);
    }
}
