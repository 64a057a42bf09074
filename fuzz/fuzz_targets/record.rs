//! Queue lines are the one thing an agent container hands the root host. Whatever the bytes,
//! parsing must not panic; what it accepts must be valid and survive the trip through the
//! writer's `to_line` unchanged, on exactly one line.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sidespawn::shared::record::{MAX_LINE_BYTES, Record};

fuzz_target!(|data: &[u8]| {
    let Ok(record) = Record::parse_line(data) else {
        return;
    };
    record
        .validate()
        .expect("parse_line returned a record that does not validate");
    let line = record.to_line();
    assert!(
        line.ends_with('\n') && line.matches('\n').count() == 1,
        "to_line did not give one line: {line:?}"
    );
    let body = &line.as_bytes()[..line.len() - 1];
    // The writer spells out `null` fields the input may have left out, so a line right at the
    // limit can come back longer than it: only compare what the host would read again.
    if body.len() <= MAX_LINE_BYTES {
        let back = Record::parse_line(body).expect("the writer's own line is refused");
        assert_eq!(back, record, "round trip changed the record");
    }
});
