//! Any JSON body for the four task-creating requests: parsing into the task payloads never
//! panics, and a parsed payload serializes back.
#![no_main]
use afterview_core::tasks::{
    GenerateComparison, GenerateCostInfographic, GenerateExport, GenerateVisualization,
};
use libfuzzer_sys::fuzz_target;

fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(data: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(data) {
        serde_json::to_vec(&v).expect("a parsed payload serializes");
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<GenerateVisualization>(data);
    round_trip::<GenerateComparison>(data);
    round_trip::<GenerateExport>(data);
    round_trip::<GenerateCostInfographic>(data);
});
