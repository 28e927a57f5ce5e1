//! Any bytes a broker may hold as a task message: decoding never panics, and a decoded
//! message has sane limits.
#![no_main]
use afterview_engine::message::TaskMessage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = TaskMessage::from_envelope(data, "celery") {
        for l in [m.timelimit.hard, m.timelimit.soft].into_iter().flatten() {
            assert!(l.is_finite() && l >= 0.0);
        }
        let _ = m.to_envelope();
    }
});
