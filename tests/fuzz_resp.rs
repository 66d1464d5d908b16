//! A proptest-based fuzzer for the sidecar's RESP codec, run by `cargo test` in CI.
//!
//! Why proptest and not only cargo-fuzz: libFuzzer needs a nightly toolchain and cargo-fuzz,
//! which CI (stable, `make test`) does not have. `fuzz/` holds a libFuzzer target for the same
//! checks, to run by hand with `cargo +nightly fuzz run resp`; this file keeps the codec under
//! a fuzzer on every CI run. Rather than random bytes, which almost never form a frame, it
//! mutates *valid* requests and replies the way broken or hostile peers do: truncation,
//! flipped bytes, stray CR/LF, lengths replaced by huge, negative or malformed numbers, deep
//! nesting, spliced-in garbage. Every input goes through all the entry points, which must not
//! panic, must agree with one another (one-shot vs resumable, scanner vs decoder, chunked vs
//! whole), and must decode valid inputs exactly.
//!
//! Default: 2,000 cases per property (a few seconds in a debug build); `PROPTEST_CASES=100000`
//! for a longer run.
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use proptest::prelude::*;
use redis_fleet::redis::resp::{
    Frame, FrameScanner, Limits, ProtocolError, RequestDecoder, Value, encode_request, frame_len,
    parse_frame, parse_request, parse_value, split_frame,
};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        // Shrinking deep frames is slow and a failure here is easy to read unshrunk.
        max_shrink_iters: 2_000,
        ..ProptestConfig::default()
    }
}

fn tiny() -> Limits {
    Limits {
        max_bulk_len: 16,
        max_array_len: 8,
        max_depth: 3,
        max_inline_len: 24,
    }
}

// --- valid inputs -----------------------------------------------------------------------------

fn arb_line() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..16).prop_map(|mut bytes| {
        for b in &mut bytes {
            if *b == b'\r' || *b == b'\n' {
                *b = b'_';
            }
        }
        bytes
    })
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let leaf = prop_oneof![
        arb_line().prop_map(|l| Frame::Simple(l.into())),
        arb_line().prop_map(|l| Frame::Error(l.into())),
        any::<i64>().prop_map(Frame::Integer),
        prop_oneof![Just(0i64), Just(-1), Just(1)].prop_map(Frame::Integer),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(|b| Frame::Bulk(b.into())),
        Just(Frame::Null),
        Just(Frame::NullArray),
    ];
    leaf.prop_recursive(6, 48, 5, |inner| {
        proptest::collection::vec(inner, 0..5).prop_map(Frame::Array)
    })
}

fn arb_args() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..12), 1..5)
}

/// A pipelined stream of requests, multibulk and inline mixed, plus what it must decode to.
fn arb_requests() -> impl Strategy<Value = (Vec<u8>, Vec<Vec<Vec<u8>>>)> {
    let one = prop_oneof![
        arb_args().prop_map(|args| {
            let mut out = BytesMut::new();
            encode_request(&args, &mut out);
            (out.to_vec(), Some(args))
        }),
        // Inline, every argument quoted with escapes.
        arb_args().prop_map(|args| {
            let quoted: Vec<String> = args.iter().map(|a| quote(a)).collect();
            (format!("{}\r\n", quoted.join(" ")).into_bytes(), Some(args))
        }),
        // Inline, plain words, LF only.
        proptest::collection::vec("[a-zA-Z0-9:_-]{1,8}", 1..4).prop_map(|words| {
            let args = words.iter().map(|w| w.as_bytes().to_vec()).collect();
            (format!("{}\n", words.join(" ")).into_bytes(), Some(args))
        }),
        // What Redis ignores.
        proptest::sample::select(vec![&b"*0\r\n"[..], b"*-1\r\n", b"\r\n", b" \n"])
            .prop_map(|b| (b.to_vec(), None::<Vec<Vec<u8>>>)),
    ];
    proptest::collection::vec(one, 1..5).prop_map(|parts| {
        let mut bytes = Vec::new();
        let mut requests = Vec::new();
        for (part, args) in parts {
            bytes.extend_from_slice(&part);
            requests.extend(args);
        }
        (bytes, requests)
    })
}

fn quote(arg: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in arg {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\t' => out.push_str("\\t"),
            0x21..=0x7e | b' ' => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02X}")),
        }
    }
    out.push('"');
    out
}

fn encode(frame: &Frame) -> Vec<u8> {
    frame.to_bytes().to_vec()
}

// --- mutations --------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, &'static [u8]),
    Delete(usize, usize),
    /// Replaces the digits after the n-th `$` or `*` with `value`.
    Length(usize, &'static str),
    /// Wraps everything in `depth` one-element arrays.
    Nest(usize),
    Duplicate(usize, usize),
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    let position = any::<usize>();
    prop_oneof![
        position.prop_map(Mutation::Truncate),
        (position, any::<u8>()).prop_map(|(at, x)| Mutation::Flip(at, x | 1)),
        (
            position,
            proptest::sample::select(vec![
                &b"\r"[..],
                b"\n",
                b"\r\n",
                b"\0",
                b"\"",
                b"'",
                b"*",
                b"$",
                b"*1\r\n",
                b"$-1\r\n",
                b"%2\r\n",
            ])
        )
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (position, 1usize..8).prop_map(|(at, n)| Mutation::Delete(at, n)),
        (
            0usize..6,
            prop_oneof![
                Just("10000000000"),
                Just("9223372036854775807"),
                Just("9223372036854775808"),
                Just("-9223372036854775808"),
                Just("99999999999999999999999"),
                Just("-2"),
                Just("-1"),
                Just("0"),
                Just("-0"),
                Just("007"),
                Just("+3"),
                Just(" 3"),
                Just("3x"),
                Just(""),
                Just("1048577"),
            ]
        )
            .prop_map(|(n, value)| Mutation::Length(n, value)),
        (1usize..80).prop_map(Mutation::Nest),
        (position, 1usize..16).prop_map(|(at, n)| Mutation::Duplicate(at, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
    match *mutation {
        Mutation::Truncate(i) => {
            let i = at(i, bytes.len());
            bytes.truncate(i);
        }
        Mutation::Flip(i, x) => {
            if !bytes.is_empty() {
                let i = i % bytes.len();
                bytes[i] ^= x;
            }
        }
        Mutation::Insert(i, what) => {
            let i = at(i, bytes.len());
            bytes.splice(i..i, what.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let i = at(i, bytes.len());
            let end = (i + n).min(bytes.len());
            bytes.drain(i..end);
        }
        Mutation::Length(n, value) => {
            let headers: Vec<usize> = bytes
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'$' || **b == b'*')
                .map(|(i, _)| i)
                .collect();
            if let Some(&h) = headers.get(n % headers.len().max(1)) {
                let end = bytes[h + 1..]
                    .iter()
                    .position(|b| *b == b'\r')
                    .map_or(bytes.len(), |p| h + 1 + p);
                bytes.splice(h + 1..end, value.bytes());
            }
        }
        Mutation::Nest(depth) => {
            let mut nested = b"*1\r\n".repeat(depth);
            nested.append(bytes);
            *bytes = nested;
        }
        Mutation::Duplicate(i, n) => {
            let i = at(i, bytes.len());
            let end = (i + n).min(bytes.len());
            let copy = bytes[i..end].to_vec();
            bytes.splice(i..i, copy);
        }
    }
}

// --- checks -----------------------------------------------------------------------------------

/// Splits `bytes` into chunks of the given (cycled) sizes.
fn chunks<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap()).clamp(1, rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

/// All reply entry points on `bytes`; returns the one-shot result after checking that the
/// others agree with it.
fn check_reply(
    bytes: &[u8],
    limits: &Limits,
    sizes: &[usize],
) -> Result<Option<(Frame, usize)>, ProtocolError> {
    let len = frame_len(bytes, limits);
    let parsed = parse_frame(bytes, limits);
    assert_eq!(
        parsed
            .as_ref()
            .map(|f| f.as_ref().map(|(_, n)| *n))
            .map_err(|e| *e),
        len,
        "parse_frame and frame_len disagree on {bytes:?}"
    );
    if let Ok(Some(n)) = len {
        assert!(n > 0 && n <= bytes.len());
    }
    // Resumable scanning in chunks ends the same way.
    let mut scanner = FrameScanner::new();
    let mut seen = 0;
    let mut incremental = Ok(None);
    for chunk in chunks(bytes, sizes) {
        seen += chunk.len();
        incremental = scanner.scan(&bytes[..seen], limits);
        if incremental != Ok(None) {
            break;
        }
    }
    if !bytes.is_empty() {
        assert_eq!(incremental, len, "chunked scan disagrees on {bytes:?}");
    }
    let mut buf = BytesMut::from(bytes);
    let split = split_frame(&mut buf, limits);
    assert_eq!(
        split,
        parsed.clone().map(|f| f.map(|(frame, _)| frame)),
        "split_frame disagrees on {bytes:?}"
    );
    if let Ok(Some((frame, _))) = &parsed {
        // Re-encoding is stable: CR/LF inside simple strings are normalised once, then kept.
        let once = encode(frame);
        let (again, used) = parse_frame(&once, limits).unwrap().unwrap();
        assert_eq!(used, once.len());
        assert_eq!(encode(&again), once);
    }
    parsed
}

/// All request entry points on `bytes`: the one-shot parser request by request, and the
/// decoder fed in chunks, must produce the same requests and end the same way.
fn check_requests(
    bytes: &[u8],
    limits: &Limits,
    sizes: &[usize],
) -> (Vec<Vec<Vec<u8>>>, Result<(), ProtocolError>) {
    let mut expected = Vec::new();
    let mut rest = bytes;
    let expected_end = loop {
        match parse_request(rest, limits) {
            Ok(Some((args, used))) => {
                assert!(used > 0 && used <= rest.len());
                if !args.is_empty() {
                    expected.push(args.iter().map(|a| a.to_vec()).collect());
                }
                rest = &rest[used..];
            }
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let mut decoder = RequestDecoder::new(*limits);
    let mut buf = BytesMut::new();
    let mut got: Vec<Vec<Vec<u8>>> = Vec::new();
    let mut got_end = Ok(());
    'feed: for chunk in chunks(bytes, sizes) {
        buf.extend_from_slice(chunk);
        if let Some(needed) = decoder.needed() {
            assert!(needed > buf.len() - chunk.len());
        }
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(args)) => {
                    assert!(!args.is_empty());
                    got.push(args.iter().map(|a| a.to_vec()).collect());
                }
                Ok(None) => break,
                Err(e) => {
                    got_end = Err(e);
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(
        got, expected,
        "decoder and parse_request disagree on {bytes:?}"
    );
    assert_eq!(
        got_end, expected_end,
        "decoder and parse_request end differently on {bytes:?}"
    );
    (expected, expected_end)
}

fn arb_sizes() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(1usize..40, 1..5)
}

// --- RESP3 ----------------------------------------------------------------------------------

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        arb_line().prop_map(|l| Value::Simple(l.into())),
        arb_line().prop_map(|l| Value::Error(l.into())),
        any::<i64>().prop_map(Value::Integer),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(|b| Value::Bulk(b.into())),
        Just(Value::Null),
        any::<f64>().prop_map(|d| Value::Double(format!("{d}").replace("NaN", "nan").into())),
        any::<bool>().prop_map(Value::Boolean),
        any::<i64>().prop_map(|n| Value::BigNumber(format!("{n}0").into())),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(|b| Value::Verbatim {
            format: *b"txt",
            text: b.into()
        }),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(|b| Value::BlobError(b.into())),
    ];
    leaf.prop_recursive(5, 48, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Set),
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Push),
            proptest::collection::vec((inner.clone(), inner.clone()), 0..4).prop_map(Value::Map),
            (
                proptest::collection::vec((inner.clone(), inner.clone()), 1..3),
                inner
            )
                .prop_filter("an attribute describes a value", |(_, v)| {
                    !matches!(v, Value::Attribute { .. })
                })
                .prop_map(|(attributes, value)| Value::Attribute {
                    attributes,
                    value: Box::new(value)
                }),
        ]
    })
}

/// The RESP3 parser on any bytes: never a panic; a value it accepts re-encodes to bytes that
/// parse and re-encode identically (a CR or LF inside a line is normalised once).
fn check_value(bytes: &[u8], limits: &Limits) -> Result<(), TestCaseError> {
    if let Ok(Some((value, used))) = parse_value(bytes, limits) {
        prop_assert!(used > 0 && used <= bytes.len());
        let once = value.to_resp3();
        let (again, again_used) = parse_value(&once, &Limits::replies())
            .map_err(|e| TestCaseError::fail(e.to_string()))?
            .ok_or_else(|| TestCaseError::fail("re-encoding incomplete"))?;
        prop_assert_eq!(again_used, once.len());
        prop_assert_eq!(again.to_resp3(), once);
        // RESP2 down-conversion always yields one valid RESP2 frame.
        let two = value.to_resp2();
        prop_assert_eq!(frame_len(&two, &Limits::replies()), Ok(Some(two.len())));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Valid replies decode exactly, at every chunking, and every proper prefix is incomplete.
    #[test]
    fn valid_replies_decode_exactly(frame in arb_frame(), sizes in arb_sizes(), cut in any::<usize>()) {
        let bytes = encode(&frame);
        let limits = Limits::default();
        prop_assert_eq!(check_reply(&bytes, &limits, &sizes), Ok(Some((frame, bytes.len()))));
        let cut = cut % bytes.len();
        prop_assert_eq!(check_reply(&bytes[..cut], &limits, &sizes), Ok(None));
    }

    /// Valid request streams decode exactly, whatever the read sizes.
    #[test]
    fn valid_requests_decode_exactly((bytes, requests) in arb_requests(), sizes in arb_sizes()) {
        let (got, end) = check_requests(&bytes, &Limits::default(), &sizes);
        prop_assert_eq!(got, requests);
        prop_assert_eq!(end, Ok(()));
    }

    /// Mutated replies: no panic, every entry point agrees, under roomy and tiny limits.
    #[test]
    fn mutated_replies(
        frame in arb_frame(),
        mutations in proptest::collection::vec(arb_mutation(), 1..4),
        sizes in arb_sizes(),
    ) {
        let mut bytes = encode(&frame);
        for m in &mutations {
            apply(&mut bytes, m);
        }
        for limits in [Limits::default(), tiny(), Limits::replies()] {
            let _ = check_reply(&bytes, &limits, &sizes);
            let _ = check_requests(&bytes, &limits, &sizes);
        }
    }

    /// Mutated request streams: same, and the requests before the first damaged byte still
    /// come out intact.
    #[test]
    fn mutated_requests(
        (bytes, _) in arb_requests(),
        mutations in proptest::collection::vec(arb_mutation(), 1..4),
        sizes in arb_sizes(),
    ) {
        let mut mutated = bytes.clone();
        for m in &mutations {
            apply(&mut mutated, m);
        }
        for limits in [Limits::default(), tiny()] {
            let _ = check_requests(&mutated, &limits, &sizes);
            let _ = check_reply(&mutated, &limits, &sizes);
        }
        // Requests wholly inside the common prefix of original and mutant are unaffected.
        let common = bytes.iter().zip(&mutated).take_while(|(a, b)| a == b).count();
        let limits = Limits::default();
        let mut rest = &bytes[..];
        let mut offset = 0;
        while let Ok(Some((args, used))) = parse_request(rest, &limits) {
            if offset + used > common {
                break;
            }
            // The mutant, seen from that offset, still holds this request: unless it now
            // ends early, as an inline line can when a LF lands inside it.
            if let Ok(Some((theirs, their_used))) = parse_request(&mutated[offset..], &limits)
                && their_used == used
            {
                prop_assert_eq!(theirs, args);
            }
            offset += used;
            rest = &rest[used..];
        }
    }

    /// Plain random bytes, for the paths structure never reaches.
    #[test]
    fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..96), sizes in arb_sizes()) {
        for limits in [Limits::default(), tiny()] {
            let _ = check_reply(&bytes, &limits, &sizes);
            let _ = check_requests(&bytes, &limits, &sizes);
        }
    }

    #[test]
    fn valid_resp3_values_decode_exactly(value in arb_value(), cut in any::<usize>()) {
        let bytes = value.to_resp3();
        let (parsed, used) = parse_value(&bytes, &Limits::replies()).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(parsed.to_resp3(), bytes.clone());
        let cut = cut % bytes.len().max(1);
        prop_assert_eq!(parse_value(&bytes[..cut], &Limits::replies()), Ok(None));
        check_value(&bytes, &Limits::replies())?;
    }

    #[test]
    fn mutated_resp3_values_never_crash(
        value in arb_value(),
        mutations in proptest::collection::vec(arb_mutation(), 1..4),
    ) {
        let mut bytes = value.to_resp3().to_vec();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        for limits in [Limits::replies(), tiny()] {
            check_value(&bytes, &limits)?;
        }
    }

    #[test]
    fn random_bytes_as_resp3(bytes in proptest::collection::vec(any::<u8>(), 0..96)) {
        for limits in [Limits::replies(), tiny()] {
            check_value(&bytes, &limits)?;
        }
    }
}

/// The limits hold on the first header, not after buffering: fixed cases the mutations above
/// reach only by chance.
#[test]
fn hostile_headers_are_refused_at_once() {
    let limits = Limits::default();
    for (bytes, error) in [
        (
            &b"*1\r\n$10000000000\r\n"[..],
            ProtocolError::InvalidBulkLength,
        ),
        (b"*10000000000\r\n", ProtocolError::InvalidMultibulkLength),
        (b"*1\r\n$-5\r\n", ProtocolError::InvalidBulkLength),
    ] {
        assert_eq!(parse_request(bytes, &limits), Err(error), "{bytes:?}");
    }
    assert_eq!(
        frame_len(b"$10000000000\r\n", &limits),
        Err(ProtocolError::InvalidBulkLength)
    );
    assert_eq!(
        frame_len(&b"*1\r\n".repeat(10_000), &limits),
        Err(ProtocolError::NestingTooDeep)
    );
    assert_eq!(
        parse_frame(&b"*1\r\n".repeat(10_000), &Limits::replies()),
        Err(ProtocolError::NestingTooDeep)
    );
}
