#![no_main]
//! Fuzz target: arbitrary bytes from a guest as the vm engine's launcher reads them (frames, a
//! command's fields, the wait for a session's answer); none may panic or allocate unbounded.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok(Some((_, payload))) = stamp_flake::wire::read_frame(&mut r) {
        let _ = stamp_flake::wire::decode_command(&payload);
        let _ = stamp_flake::wire::decode_winsize(&payload);
    }
    let _ = stamp_flake::wire::await_session(&mut &data[..], &[7; 16], 1 << 16);
});
