//! Fuzz target: `props::pipelined_responses` (see fuzz/props.rs for the properties checked).
#![no_main]

#[path = "../props.rs"]
mod props;

libfuzzer_sys::fuzz_target!(|data: &[u8]| props::pipelined_responses(data));
