//! The queue between the threads that log and the logging thread. An event is
//! encoded straight into one of a few buffers (chosen by thread, so the runtime's
//! workers each have their own), and the logging thread takes the buffers whole and
//! writes each with one call. Per event that costs one uncontended lock: no
//! allocation, no channel message, no wake-up of the logging thread while it is busy.
//!
//! Bounds: a buffer is handed over at 64 KiB, and handed-over buffers wait up to
//! about 16 MiB in all (some 45,000 journal entries or 90,000 text lines of the
//! access log); past that, a thread that logs waits for the logging thread (requests
//! wait rather than lose events), for at most `STALL_WAIT`: a sink that takes nothing
//! for that long loses events instead of stopping the service, and the loss is
//! reported when it moves again.
//!
//! Order: events of one thread keep theirs. Events of different threads appended
//! between the same two sweeps are written slot by slot, so they can swap places
//! within that interval (about a millisecond under load; longer when the sink is
//! slow). Text and JSON lines carry their own time.

use std::collections::VecDeque;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::{Duration, Instant};

const SLOTS: usize = 16;
const BATCH_BYTES: usize = 64 * 1024;
/// What handed-over buffers may hold in all before threads that log wait.
const QUEUED_BYTES: usize = 16 * 1024 * 1024;
/// How long the logging thread rests after writing: events that arrive meanwhile
/// are written together with one call, and nobody wakes it.
const LINGER: Duration = Duration::from_millis(1);
/// How long it sleeps when it found nothing; a new event wakes it at once, this is
/// only a backstop.
const IDLE_WAIT: Duration = Duration::from_millis(250);
/// A waiting thread looks again after this long, in case the logging thread ended.
const FULL_WAIT: Duration = Duration::from_millis(50);
/// How long a thread that logs waits for room before it gives the events up: a sink
/// that takes nothing for this long (a stalled journal, a stderr pipe nobody reads)
/// must not stop the service. Until the sink moves again, events that find no room
/// are dropped at once, and their loss is reported when it does.
const STALL_WAIT: Duration = Duration::from_secs(5);
/// Room for the event that crosses `BATCH_BYTES` without growing the buffer.
const SLACK: usize = 16 * 1024;
/// How long the exit waits for the logging thread to write what it holds: a sink
/// nobody reads (a stderr pipe, a stalled journal) must not keep the process alive.
const STOP_WAIT: Duration = Duration::from_secs(2);

/// Where the logging thread writes what it takes. It must not log below WARN (that
/// would queue behind itself).
pub trait Sink: Send + 'static {
    /// One taken buffer: whole events, in the order they were appended. With
    /// [`Framing::Entries`], each event is prefixed by its length (see [`entries`]).
    fn write_batch(&mut self, batch: &[u8]);

    /// Says that `bytes` of events were given up because this sink took nothing for
    /// a while: a warning, which the layers write at once, not through this sink.
    fn report_loss(&mut self, bytes: usize) {
        tracing::warn!(
            target: "hubbub::telemetry",
            bytes,
            "log events were dropped: the log sink took nothing for {} s",
            STALL_WAIT.as_secs()
        );
    }
}

/// Whether events need their boundaries kept (a journal entry is one datagram) or
/// are a stream of lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Lines,
    Entries,
}

/// The events of a batch written with [`Framing::Entries`].
pub fn entries(mut batch: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (length, rest) = batch.split_first_chunk::<4>()?;
        let length = usize::try_from(u32::from_le_bytes(*length)).ok()?;
        let (entry, rest) = rest.split_at_checked(length)?;
        batch = rest;
        Some(entry)
    })
}

#[derive(Default)]
struct Slot {
    filling: Vec<u8>,
    handed_over: VecDeque<Vec<u8>>,
}

struct Shared {
    slots: [(Mutex<Slot>, Condvar); SLOTS],
    tuning: Tuning,
    /// The sink took nothing for `STALL_WAIT`: appenders do not wait for room.
    stuck: AtomicBool,
    /// Bytes of events given up since the last report.
    dropped: AtomicUsize,
    /// Bytes in handed-over buffers, not yet written.
    queued: AtomicUsize,
    /// Threads waiting for `queued` to fall.
    waiting: AtomicUsize,
    /// The logging thread is asleep for `IDLE_WAIT` and must be woken for an event.
    idle: AtomicBool,
    stopping: AtomicBool,
    /// The logging thread has ended: nobody takes buffers any more.
    ended: AtomicBool,
    thread: OnceLock<Thread>,
}

impl Shared {
    fn lock(&self, index: usize) -> MutexGuard<'_, Slot> {
        // A panic while encoding leaves no partial event (see `append`).
        self.slots[index]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }
}

/// The appending side; cheap to clone.
#[derive(Clone)]
pub struct Batches {
    shared: Arc<Shared>,
    framing: Framing,
}

/// Stops the logging thread when dropped, after it wrote everything appended so
/// far, or after `STOP_WAIT` if it cannot.
#[must_use = "dropping the guard stops the logging thread"]
pub struct Stopper {
    shared: Arc<Shared>,
    /// Disconnected when the logging thread ends.
    ended: mpsc::Receiver<()>,
}

impl Drop for Stopper {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.wake();
        let _ = self.ended.recv_timeout(STOP_WAIT);
    }
}

/// Starts the logging thread, which writes to `sink`.
pub fn start(name: &str, framing: Framing, sink: impl Sink) -> std::io::Result<(Batches, Stopper)> {
    start_tuned(
        name,
        framing,
        sink,
        Tuning {
            budget: QUEUED_BYTES,
            stall: STALL_WAIT,
        },
    )
}

/// The bounds, smaller in tests.
struct Tuning {
    budget: usize,
    stall: Duration,
}

fn start_tuned(
    name: &str,
    framing: Framing,
    sink: impl Sink,
    tuning: Tuning,
) -> std::io::Result<(Batches, Stopper)> {
    let shared = Arc::new(Shared {
        slots: std::array::from_fn(|_| Default::default()),
        tuning,
        stuck: AtomicBool::new(false),
        dropped: AtomicUsize::new(0),
        queued: AtomicUsize::new(0),
        waiting: AtomicUsize::new(0),
        idle: AtomicBool::new(false),
        stopping: AtomicBool::new(false),
        ended: AtomicBool::new(false),
        thread: OnceLock::new(),
    });
    let (on_end, ended) = mpsc::channel();
    let thread = std::thread::Builder::new().name(name.to_owned()).spawn({
        let shared = Arc::clone(&shared);
        move || {
            let _ended = Ended {
                shared: &shared,
                _tell_the_stopper: on_end,
            };
            write_until_stopped(&shared, sink);
        }
    })?;
    let _ = shared.thread.set(thread.thread().clone());
    Ok((
        Batches {
            shared: Arc::clone(&shared),
            framing,
        },
        Stopper { shared, ended },
    ))
}

/// This thread's slot: threads take slots in turn, so the few runtime workers, which
/// start first and log the most, each have their own.
fn slot_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    }
    INDEX.with(|index| *index)
}

/// Removes a partly encoded event if encoding panics.
struct Unfinished<'a> {
    buffer: &'a mut Vec<u8>,
    start: usize,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        self.buffer.truncate(self.start);
    }
}

impl Batches {
    /// Appends one event, which `encode` writes at the end of the buffer it is given.
    /// `encode` runs under the slot's lock: it must not log (format first if it might).
    pub fn append(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        let index = slot_index();
        let mut slot = self.shared.lock(index);
        let start = slot.filling.len();
        let unfinished = Unfinished {
            buffer: &mut slot.filling,
            start,
        };
        if self.framing == Framing::Entries {
            unfinished.buffer.extend_from_slice(&[0; 4]);
        }
        encode(unfinished.buffer);
        if self.framing == Framing::Entries {
            let length = unfinished.buffer.len() - start - 4;
            let Ok(length) = u32::try_from(length) else {
                return; // 4 GiB in one event: dropped (`unfinished` removes it)
            };
            unfinished.buffer[start..start + 4].copy_from_slice(&length.to_le_bytes());
        }
        std::mem::forget(unfinished);
        if slot.filling.len() >= BATCH_BYTES {
            slot = self.hand_over(index, slot);
        }
        drop(slot);
        if self.shared.idle.load(Ordering::SeqCst) && self.shared.idle.swap(false, Ordering::SeqCst)
        {
            self.shared.wake();
        }
    }

    /// Queues the full buffer for the logging thread, first waiting while the queued
    /// buffers are at their bound.
    fn hand_over<'a>(
        &'a self,
        index: usize,
        mut slot: MutexGuard<'a, Slot>,
    ) -> MutexGuard<'a, Slot> {
        let shared = &self.shared;
        let since = Instant::now();
        while shared.queued.load(Ordering::SeqCst) + slot.filling.len() > shared.tuning.budget {
            if shared.ended.load(Ordering::SeqCst) {
                // Nobody will write them: keep the newest events rather than block.
                let cleared: usize = slot.handed_over.drain(..).map(|b| b.len()).sum();
                shared.queued.fetch_sub(cleared, Ordering::SeqCst);
                continue;
            }
            if shared.stuck.load(Ordering::SeqCst) || since.elapsed() >= shared.tuning.stall {
                // The sink has taken nothing for that long: serving goes on without
                // these events, and the loss is reported once the sink moves again.
                shared.stuck.store(true, Ordering::SeqCst);
                shared
                    .dropped
                    .fetch_add(slot.filling.len(), Ordering::SeqCst);
                slot.filling.clear();
                return slot;
            }
            shared.waiting.fetch_add(1, Ordering::SeqCst);
            shared.wake();
            slot = shared.slots[index]
                .1
                .wait_timeout(slot, FULL_WAIT)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            shared.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        // The logging thread may have taken the buffer while this thread waited.
        if slot.filling.len() >= BATCH_BYTES {
            let fresh = Vec::with_capacity(BATCH_BYTES + SLACK);
            let full = std::mem::replace(&mut slot.filling, fresh);
            shared.queued.fetch_add(full.len(), Ordering::SeqCst);
            slot.handed_over.push_back(full);
            shared.wake();
        }
        slot
    }
}

/// Marks the thread as ended however it ends, frees anyone waiting for it, and says
/// so on stderr if nobody asked it to stop.
struct Ended<'a> {
    shared: &'a Shared,
    /// Dropped after `drop` ran: the `Stopper` then knows the thread is done.
    _tell_the_stopper: mpsc::Sender<()>,
}

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        self.shared.ended.store(true, Ordering::SeqCst);
        for (_, ready) in &self.shared.slots {
            ready.notify_all();
        }
        if !self.shared.stopping.load(Ordering::SeqCst) {
            let _ = writeln!(
                std::io::stderr(),
                "hubbub: the logging thread ended; INFO events are no longer written"
            );
        }
    }
}

fn write_until_stopped(shared: &Shared, mut sink: impl Sink) {
    let mut spares: Vec<Vec<u8>> = Vec::new();
    loop {
        // Read before the sweep: everything appended before the stop is written.
        let stopping = shared.stopping.load(Ordering::SeqCst);
        let wrote = write_all_taken(shared, &mut sink, &mut spares);
        if stopping {
            return;
        }
        if wrote {
            std::thread::sleep(LINGER);
            continue;
        }
        shared.idle.store(true, Ordering::SeqCst);
        // An event appended before `idle` was set did not wake us: look once more.
        if write_all_taken(shared, &mut sink, &mut spares) || shared.stopping.load(Ordering::SeqCst)
        {
            shared.idle.store(false, Ordering::SeqCst);
            continue;
        }
        std::thread::park_timeout(IDLE_WAIT);
        shared.idle.store(false, Ordering::SeqCst);
    }
}

/// Takes every slot's buffers, then writes them; true when there was anything.
fn write_all_taken(shared: &Shared, sink: &mut impl Sink, spares: &mut Vec<Vec<u8>>) -> bool {
    let mut taken: Vec<(Vec<u8>, bool)> = Vec::new();
    for index in 0..SLOTS {
        let mut slot = shared.lock(index);
        if slot.filling.is_empty() && slot.handed_over.is_empty() {
            continue;
        }
        taken.extend(slot.handed_over.drain(..).map(|batch| (batch, true)));
        if !slot.filling.is_empty() {
            let spare = spares.pop().unwrap_or_default();
            taken.push((std::mem::replace(&mut slot.filling, spare), false));
        }
    }
    if taken.is_empty() {
        return false;
    }
    for (mut batch, was_queued) in taken {
        sink.write_batch(&batch);
        shared.stuck.store(false, Ordering::SeqCst);
        if was_queued {
            shared.queued.fetch_sub(batch.len(), Ordering::SeqCst);
        }
        batch.clear();
        if spares.len() < SLOTS && batch.capacity() <= 2 * BATCH_BYTES {
            spares.push(batch);
        }
    }
    let dropped = shared.dropped.swap(0, Ordering::SeqCst);
    if dropped > 0 {
        sink.report_loss(dropped);
    }
    if shared.waiting.load(Ordering::SeqCst) > 0 {
        for (_, ready) in &shared.slots {
            ready.notify_all();
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// Sends each event it writes (framed) to the test, after `pause`, and after
    /// `first_pause` for the first batch.
    struct Collect {
        events: mpsc::Sender<Vec<u8>>,
        pause: Duration,
        first_pause: Duration,
        lost: Arc<AtomicUsize>,
    }

    impl Collect {
        fn new(events: mpsc::Sender<Vec<u8>>, pause: Duration) -> Self {
            Self {
                events,
                pause,
                first_pause: pause,
                lost: Arc::default(),
            }
        }
    }

    impl Sink for Collect {
        fn write_batch(&mut self, batch: &[u8]) {
            std::thread::sleep(std::mem::replace(&mut self.first_pause, self.pause));
            for entry in entries(batch) {
                let _ = self.events.send(entry.to_vec());
            }
        }

        fn report_loss(&mut self, bytes: usize) {
            self.lost.fetch_add(bytes, Ordering::SeqCst);
        }
    }

    fn collecting(pause: Duration) -> (Batches, Stopper, mpsc::Receiver<Vec<u8>>) {
        let (events, received) = mpsc::channel();
        let (batches, stopper) =
            start("test-log", Framing::Entries, Collect::new(events, pause)).expect("thread");
        (batches, stopper, received)
    }

    #[test]
    fn every_event_of_every_thread_is_written_once_and_in_its_threads_order() {
        let (batches, stopper, received) = collecting(Duration::ZERO);
        let threads: Vec<_> = (0..24u8)
            .map(|thread| {
                let batches = batches.clone();
                std::thread::spawn(move || {
                    for n in 0..5_000u32 {
                        batches.append(|buffer| {
                            buffer.push(thread);
                            buffer.extend_from_slice(&n.to_le_bytes());
                            // Some large events, so buffers are handed over full.
                            buffer.resize(buffer.len() + (n as usize % 7) * 100, b'x');
                        });
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("appender");
        }
        drop(stopper);
        let mut next = [0u32; 24];
        for event in received.try_iter() {
            let thread = usize::from(event[0]);
            let n = u32::from_le_bytes(event[1..5].try_into().expect("4 bytes"));
            assert_eq!(n, next[thread], "thread {thread}");
            assert_eq!(event.len(), 5 + (n as usize % 7) * 100);
            next[thread] += 1;
        }
        assert_eq!(next, [5_000; 24]);
    }

    #[test]
    fn a_slow_sink_makes_appenders_wait_instead_of_queueing_without_bound() {
        let (events, received) = mpsc::channel();
        let sink = Collect::new(events, Duration::from_millis(20));
        // Room for four full buffers.
        let tuning = Tuning {
            budget: 4 * BATCH_BYTES + 4096,
            stall: Duration::from_secs(30),
        };
        let (batches, stopper) =
            start_tuned("test-log", Framing::Entries, sink, tuning).expect("thread");
        let started = Instant::now();
        // 40 buffers' worth: the appender has to wait for most of the sink's pauses.
        let event = vec![b'y'; 1024];
        for _ in 0..40 * 64 {
            batches.append(|buffer| buffer.extend_from_slice(&event));
            let queued = batches.shared.queued.load(Ordering::SeqCst);
            assert!(queued <= 4 * BATCH_BYTES + 4096, "{queued} bytes queued");
        }
        assert!(
            started.elapsed() >= Duration::from_millis(20 * 25),
            "appending did not wait: {:?}",
            started.elapsed()
        );
        drop(stopper);
        assert_eq!(received.try_iter().count(), 40 * 64, "nothing lost");
    }

    #[test]
    fn a_stalled_sink_stops_the_service_once_briefly_and_the_loss_is_reported() {
        let (events, received) = mpsc::channel();
        let mut sink = Collect::new(events, Duration::ZERO);
        sink.first_pause = Duration::from_secs(2);
        let lost = Arc::clone(&sink.lost);
        let tuning = Tuning {
            budget: 2 * BATCH_BYTES,
            stall: Duration::from_millis(200),
        };
        let (batches, stopper) =
            start_tuned("test-log", Framing::Entries, sink, tuning).expect("thread");
        let event = vec![b'z'; 1020];
        let started = Instant::now();
        for _ in 0..40 * 64 {
            batches.append(|buffer| buffer.extend_from_slice(&event));
        }
        let appending = started.elapsed();
        // One wait of `stall`, not one per buffer, and not the sink's 2 s.
        assert!(
            appending >= Duration::from_millis(200) && appending < Duration::from_millis(1500),
            "{appending:?}"
        );
        std::thread::sleep(Duration::from_secs(2));
        drop(stopper);
        let written = received.try_iter().count();
        let dropped = lost.load(Ordering::SeqCst);
        assert!(
            dropped > 0 && written > 0,
            "{written} written, {dropped} bytes dropped"
        );
        // Every event either written or counted as dropped (1,024 bytes framed).
        assert_eq!(written + dropped / 1024, 40 * 64);
    }

    #[test]
    fn a_sink_that_never_returns_does_not_keep_the_process_from_exiting() {
        struct Stuck;
        impl Sink for Stuck {
            fn write_batch(&mut self, _: &[u8]) {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        let (batches, stopper) = start("test-log", Framing::Lines, Stuck).expect("thread");
        batches.append(|buffer| buffer.extend_from_slice(b"never written\n"));
        std::thread::sleep(Duration::from_millis(20));
        let stopping = Instant::now();
        drop(stopper);
        let waited = stopping.elapsed();
        assert!(
            waited >= STOP_WAIT && waited < STOP_WAIT + Duration::from_secs(1),
            "{waited:?}"
        );
    }

    #[test]
    fn events_after_quiet_spells_do_not_wait_for_the_backstop() {
        let (batches, _stopper, received) = collecting(Duration::ZERO);
        let mut delays = Vec::new();
        for round in 0..600u32 {
            // Pauses around the time the logging thread takes to go idle, so that
            // events land before, while and after it does.
            std::thread::sleep(Duration::from_micros(u64::from(round % 7) * 300));
            let appended = Instant::now();
            batches.append(|buffer| buffer.extend_from_slice(&round.to_le_bytes()));
            let event = received.recv_timeout(2 * IDLE_WAIT).expect("written");
            assert_eq!(event, round.to_le_bytes());
            delays.push(appended.elapsed());
        }
        delays.sort();
        // Without the wake-up every event after a quiet spell waits IDLE_WAIT; a busy
        // test machine may delay a few.
        let late = delays.iter().filter(|d| **d >= IDLE_WAIT / 2).count();
        assert!(
            delays[delays.len() / 2] < Duration::from_millis(20),
            "{delays:?}"
        );
        assert!(
            late < 6,
            "{late} of 600 waited: {:?}",
            &delays[delays.len() - 10..]
        );
    }

    #[test]
    fn a_panic_while_encoding_leaves_no_partial_event() {
        let (batches, stopper, received) = collecting(Duration::ZERO);
        batches.append(|buffer| buffer.extend_from_slice(b"before"));
        let panicking = batches.clone();
        let outcome = std::thread::spawn(move || {
            panicking.append(|buffer| {
                buffer.extend_from_slice(b"half");
                panic!("a Debug impl panicked");
            })
        })
        .join();
        assert!(outcome.is_err());
        batches.append(|buffer| buffer.extend_from_slice(b"after"));
        drop(stopper);
        let events: Vec<Vec<u8>> = received.try_iter().collect();
        assert_eq!(events, [b"before".to_vec(), b"after".to_vec()]);
    }
}
