//! Any bytes published on the pidbox channel: decoding and addressing never panic (a pattern
//! of 300,000 stars once overflowed the stack).
#![no_main]
use afterview_engine_redis::ControlRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(c) = ControlRequest::decode(data, 1.8e9) {
        let _ = c.addresses("worker@host");
        let _ = c.addresses("");
    }
});
