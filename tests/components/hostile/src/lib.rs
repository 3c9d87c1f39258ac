//! `hostile`: a test component whose behaviour is chosen by the input value's
//! JSON field `"action"`. Used by the worker's sandbox/limits tests.
//!
//! | action       | behaviour |
//! |--------------|-----------|
//! | `ok`         | echo the record unchanged |
//! | `loop`       | spin forever (black_box counter; not optimised away) |
//! | `alloc`      | allocate and touch 1 MiB blocks forever |
//! | `recurse`    | unbounded non-tail recursion with a 1 KiB frame on the shadow stack (in linear memory): overflows the 1 MiB shadow stack first, a trap as an out-of-bounds memory access |
//! | `recurse-native` | unbounded non-tail recursion with no shadow-stack frame: exhausts the engine's wasm call stack (`max_wasm_stack`) |
//! | `recurse-locals` | like `recurse-native` without `black_box` in the frames (which spills to the 1 MiB shadow stack): only the engine's wasm stack grows, whatever `max_wasm_stack` is |
//! | `big-output` | one output whose value is `size` bytes (default 8 MiB) of `x` |
//! | `open-file`  | read `/etc/passwd`, create `/tmp/x`: `failed("open-file: ...")`, or `{"escaped":"file"}` if either works |
//! | `socket`     | TCP connect to 127.0.0.1:9092: `failed("socket: ...")`, or `{"escaped":"socket"}` |
//! | `env`        | one output `{"vars": {..}, "args": [..]}` from `std::env` |
//! | `panic`      | `panic!("hostile panic")` (a wasm trap) |
//! | `index-oob`  | index a 3-element `Vec` at `i` (default 7): "index out of bounds" panic |
//! | `print-then-panic` | `size` bytes (default 1 MiB) to stderr in 1000-byte lines, the first coloured with an ANSI escape, then like `index-oob` |
//! | `error`      | `invalid-input("hostile error")` |
//! | `filter`     | zero outputs |
//! | `fanout`     | `n` outputs (default 3), value `{"id": <id>, "copy": i}` for i in 0..n |
//! | `route`      | echo, routed to the topic in field `"topic"` |
//! | `log`        | one host log line per level, then echo |
//! | `log-huge`   | one host `log` call with a message of `size` bytes (default 8 MiB), then echo |
//! | `fanout-empty` | `n` outputs (default 9000) with empty values |
//! | `fanout-one-big` | `n` outputs (default 3) `{"id": <id>, "copy": i}`, the one at index `big` (default 1) `size` bytes (default 8 MiB) of `x` instead |
//! | `sleep`      | `std::thread::sleep` for an hour (`subscribe-duration` + `pollable.block` in the host) |
//! | `poll`       | `wasi:io/poll.poll` on an hour-long `subscribe-duration` pollable |
//! | `poll-instant` | `wasi:io/poll.poll` on a `subscribe-instant` pollable an hour ahead |
//! | `stdin`      | read stdin to its end; one output `{"stdin_bytes": n}` |
//!
//! A missing `action` or an unknown one is `invalid-input` naming it.

use std::hint::black_box;

use pipeline_sdk::{json, log, FieldsExt, Map, Output, Record, TransformError, Value};

pub const DEFAULT_BIG_OUTPUT: u64 = 8 * 1024 * 1024;
pub const DEFAULT_FANOUT: u64 = 3;

pub fn hostile(record: Record) -> Result<Vec<Output>, TransformError> {
    let fields = record.fields()?;
    let action = fields.require_str("action")?;
    match action {
        "ok" => Ok(vec![Output::from(record)]),
        "loop" => spin(),
        "alloc" => alloc_forever(),
        "recurse" => {
            let depth = recurse(black_box(0));
            Err(TransformError::failed(format!(
                "recursion returned at depth {depth}"
            )))
        }
        "recurse-native" => {
            let depth = recurse_native(black_box(0));
            Err(TransformError::failed(format!(
                "recursion returned at depth {depth}"
            )))
        }
        "recurse-locals" => {
            let depth = recurse_locals(0, black_box(u64::MAX));
            Err(TransformError::failed(format!(
                "recursion returned at depth {depth}"
            )))
        }
        "big-output" => {
            let size = optional_u64(&fields, "size", DEFAULT_BIG_OUTPUT)?;
            let size = usize::try_from(size).map_err(|_| {
                TransformError::invalid_input(format!("field `size` too large: {size}"))
            })?;
            Ok(vec![Output::from(&record).with_value(vec![b'x'; size])])
        }
        "open-file" => open_file(&record),
        "socket" => socket(&record),
        "env" => {
            let vars: Map<String, Value> = std::env::vars()
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            let args: Vec<String> = std::env::args().collect();
            Ok(vec![
                Output::from(&record).with_json(&json!({"vars": vars, "args": args}))
            ])
        }
        "panic" => panic!("hostile panic"),
        "index-oob" => index_oob(&fields),
        "print-then-panic" => {
            let size = optional_u64(&fields, "size", 1 << 20)? as usize;
            let mut stderr = std::io::stderr().lock();
            let _ = std::io::Write::write_all(&mut stderr, b"\x1b[31mflood starts\x1b[0m\n");
            let mut line = [b'x'; 1000];
            line[999] = b'\n';
            for _ in 0..size / 1000 {
                let _ = std::io::Write::write_all(&mut stderr, &line);
            }
            drop(stderr);
            index_oob(&fields)
        }
        "error" => Err(TransformError::invalid_input("hostile error")),
        "filter" => Ok(Vec::new()),
        "fanout" => {
            let n = optional_u64(&fields, "n", DEFAULT_FANOUT)?;
            let id = fields.get("id").cloned().unwrap_or(Value::Null);
            Ok((0..n)
                .map(|i| Output::from(&record).with_json(&json!({"id": id, "copy": i})))
                .collect())
        }
        "route" => {
            let topic = fields.require_str("topic")?.to_owned();
            Ok(vec![Output::from(record).to(topic)])
        }
        "log" => {
            log::trace("hostile: trace line");
            log::debug!("hostile: debug line for offset {}", record.offset());
            log::info!("hostile: info line for topic {:?}", record.topic());
            log::warn!("hostile: warn line");
            log::error!("hostile: error line");
            Ok(vec![Output::from(record)])
        }
        "log-huge" => {
            let size = optional_u64(&fields, "size", DEFAULT_BIG_OUTPUT)? as usize;
            log::info(&"x".repeat(size));
            Ok(vec![Output::from(record)])
        }
        "fanout-one-big" => {
            let n = optional_u64(&fields, "n", DEFAULT_FANOUT)?;
            let big = optional_u64(&fields, "big", 1)?;
            let size = optional_u64(&fields, "size", DEFAULT_BIG_OUTPUT)? as usize;
            let id = fields.get("id").cloned().unwrap_or(Value::Null);
            Ok((0..n)
                .map(|i| {
                    if i == big {
                        Output::from(&record).with_value(vec![b'x'; size])
                    } else {
                        Output::from(&record).with_json(&json!({"id": id, "copy": i}))
                    }
                })
                .collect())
        }
        "fanout-empty" => {
            let n = optional_u64(&fields, "n", 9000)?;
            Ok((0..n)
                .map(|_| Output::from(&record).with_value(Vec::new()))
                .collect())
        }
        "sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            Err(TransformError::failed("sleep: woke up after an hour"))
        }
        "poll" => {
            let p = wasi::clocks::monotonic_clock::subscribe_duration(3600 * 1_000_000_000);
            let ready = wasi::io::poll::poll(&[&p]);
            Err(TransformError::failed(format!("poll: returned {ready:?}")))
        }
        "poll-instant" => {
            let now = wasi::clocks::monotonic_clock::now();
            let p = wasi::clocks::monotonic_clock::subscribe_instant(now + 3600 * 1_000_000_000);
            let ready = wasi::io::poll::poll(&[&p]);
            Err(TransformError::failed(format!(
                "poll-instant: returned {ready:?}"
            )))
        }
        "stdin" => {
            use std::io::Read;
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| TransformError::failed(format!("stdin: {e}")))?;
            Ok(vec![
                Output::from(&record).with_json(&json!({"stdin_bytes": buf.len()}))
            ])
        }
        other => Err(TransformError::invalid_input(format!(
            "unknown action `{other}`"
        ))),
    }
}

fn optional_u64(
    fields: &Map<String, Value>,
    name: &str,
    default: u64,
) -> Result<u64, TransformError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().ok_or_else(|| {
            TransformError::invalid_input(format!("field `{name}` must be a non-negative integer"))
        }),
    }
}

fn index_oob(fields: &Map<String, Value>) -> Result<Vec<Output>, TransformError> {
    let i = optional_u64(fields, "i", 7)? as usize;
    let v = vec![1u8, 2, 3];
    let picked = v[black_box(i)];
    Err(TransformError::failed(format!(
        "index {i} was in bounds: {picked}"
    )))
}

fn spin() -> ! {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
    }
}

fn alloc_forever() -> ! {
    const MIB: usize = 1024 * 1024;
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block = vec![0u8; MIB];
        // Touch every page so the memory is really committed.
        for i in (0..MIB).step_by(4096) {
            block[i] = (blocks.len() as u8).wrapping_add(1);
        }
        blocks.push(black_box(block));
    }
}

/// Not a tail call (the result is combined with a local after the call), and
/// the frame holds a 1 KiB array that escapes through `black_box`, so the
/// optimiser can neither loop-ify nor shrink it.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    // Never true, but the optimiser cannot know that.
    if depth == black_box(u64::MAX) {
        return 0;
    }
    let mut frame = [0u8; 1024];
    frame[(depth % 1024) as usize] = depth as u8;
    black_box(&mut frame);
    let below = recurse(black_box(depth + 1));
    below.wrapping_add(frame[(depth % 1024) as usize] as u64)
}

/// Like [`recurse`] but keeps everything in wasm locals, so only the engine's
/// native call stack grows.
#[inline(never)]
fn recurse_native(depth: u64) -> u64 {
    if depth == black_box(u64::MAX) {
        return 0;
    }
    recurse_native(black_box(depth + 1)).wrapping_add(black_box(depth))
}

/// `stop` is never reached (it comes from `black_box(u64::MAX)`). The
/// result is combined as `3 * below + depth`, which LLVM cannot turn into
/// an accumulator loop (it does that for a plain `below + depth`).
#[inline(never)]
fn recurse_locals(depth: u64, stop: u64) -> u64 {
    if depth == stop {
        return 0;
    }
    recurse_locals(depth + 1, stop)
        .wrapping_mul(3)
        .wrapping_add(depth)
}

fn open_file(record: &Record) -> Result<Vec<Output>, TransformError> {
    let read = std::fs::read("/etc/passwd");
    let create = std::fs::File::create("/tmp/x");
    match (read, create) {
        (Err(read_err), Err(create_err)) => Err(TransformError::failed(format!(
            "open-file: {read_err} (read /etc/passwd); {create_err} (create /tmp/x)"
        ))),
        _ => Ok(vec![
            Output::from(record).with_json(&json!({"escaped": "file"}))
        ]),
    }
}

fn socket(record: &Record) -> Result<Vec<Output>, TransformError> {
    match std::net::TcpStream::connect("127.0.0.1:9092") {
        Err(e) => Err(TransformError::failed(format!("socket: {e}"))),
        Ok(_) => Ok(vec![
            Output::from(record).with_json(&json!({"escaped": "socket"}))
        ]),
    }
}

pipeline_sdk::export_transform!(hostile);

#[cfg(test)]
mod tests {
    use super::*;

    fn run(v: Value) -> Result<Vec<Output>, TransformError> {
        hostile(Record::from_json(&v).with_key("k").with_timestamp(1))
    }

    #[test]
    fn ok_echoes() {
        let v = json!({"action": "ok", "id": 7, "other": [1, 2]});
        let out = run(v.clone()).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].value_json::<Value>().unwrap(), v);
        assert_eq!(out[0].key(), Some(&b"k"[..]));
    }

    #[test]
    fn error_filter_unknown() {
        assert_eq!(
            run(json!({"action": "error"})).unwrap_err(),
            TransformError::invalid_input("hostile error")
        );
        assert!(run(json!({"action": "filter"})).unwrap().is_empty());
        let err = run(json!({"action": "dance"})).unwrap_err();
        assert!(
            err.is_invalid_input() && err.message().contains("`dance`"),
            "{err}"
        );
        let err = run(json!({"id": 1})).unwrap_err();
        assert_eq!(err, TransformError::invalid_input("missing field `action`"));
    }

    #[test]
    fn fanout_and_route() {
        let out = run(json!({"action": "fanout", "id": "a"})).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(
            out[2].value_json::<Value>().unwrap(),
            json!({"id": "a", "copy": 2})
        );
        assert_eq!(run(json!({"action": "fanout", "n": 0})).unwrap().len(), 0);
        let out = run(json!({"action": "route", "topic": "side"})).unwrap();
        assert_eq!(out[0].topic(), Some("side"));
    }

    #[test]
    fn big_output_size() {
        let out = run(json!({"action": "big-output", "size": 1000})).unwrap();
        assert_eq!(out[0].value().len(), 1000);
        let out = run(json!({"action": "big-output"})).unwrap();
        assert_eq!(out[0].value().len(), DEFAULT_BIG_OUTPUT as usize);
    }

    #[test]
    fn log_echoes() {
        assert_eq!(run(json!({"action": "log"})).unwrap().len(), 1);
    }

    #[test]
    #[should_panic(expected = "hostile panic")]
    fn panics() {
        let _ = run(json!({"action": "panic"}));
    }
}
