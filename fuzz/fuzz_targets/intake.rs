//! Any uploaded file: intake refuses or normalizes it, never panics, and never decodes more
//! than the limits allow.
#![no_main]
use afterview_intake::{Limits, intake};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_bytes: 1 << 20,
        max_pixels: 1 << 20,
    };
    if let Ok(n) = intake(data, &limits) {
        assert!(u64::from(n.width) * u64::from(n.height) <= limits.max_pixels);
    }
});
