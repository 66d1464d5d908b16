//! libFuzzer target for the RESP codec: every entry point on arbitrary bytes, under default
//! and tiny limits, checking that they agree with each other and never panic.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unused_imports)]
#[path = "../../src/redis/resp/mod.rs"]
mod resp;

use resp::{
    FrameScanner, Limits, RequestDecoder, frame_len, parse_frame, parse_request, parse_value,
    split_frame,
};

fuzz_target!(|data: &[u8]| {
    let tiny = Limits {
        max_bulk_len: 16,
        max_array_len: 8,
        max_depth: 3,
        max_inline_len: 16,
    };
    for limits in [Limits::default(), tiny] {
        // Replies: the one-shot scanner, the resumable one fed byte by byte, and both decoders
        // must agree.
        let len = frame_len(data, &limits);
        let parsed = parse_frame(data, &limits);
        assert_eq!(
            parsed.as_ref().map(|f| f.as_ref().map(|(_, n)| *n)),
            len.as_ref().map(|n| *n)
        );
        let mut scanner = FrameScanner::new();
        let mut incremental = Ok(None);
        for end in 1..=data.len() {
            incremental = scanner.scan(&data[..end], &limits);
            if incremental != Ok(None) {
                break;
            }
        }
        if !data.is_empty() {
            assert_eq!(incremental, len);
        }
        let mut buf = BytesMut::from(data);
        let split = split_frame(&mut buf, &limits);
        assert_eq!(split, parsed.map(|f| f.map(|(frame, _)| frame)));
        if let Ok(Some((frame, _))) = parse_frame(data, &limits) {
            // Re-encoding is stable (CR/LF inside simple strings are normalised once).
            let once = frame.to_bytes();
            let (again, used) = parse_frame(&once, &limits).unwrap().unwrap();
            assert_eq!(used, once.len());
            assert_eq!(again.to_bytes(), once);
        }

        // RESP3 values: what parses re-encodes to itself, in RESP3 and as one RESP2 frame.
        if let Ok(Some((value, used))) = parse_value(data, &limits) {
            assert!(used > 0 && used <= data.len());
            let once = value.to_resp3();
            let (again, again_used) = parse_value(&once, &Limits::replies()).unwrap().unwrap();
            assert_eq!(again_used, once.len());
            assert_eq!(again.to_resp3(), once);
            let two = value.to_resp2();
            assert_eq!(frame_len(&two, &Limits::replies()), Ok(Some(two.len())));
        }

        // Requests: one-shot parsing request by request vs the decoder fed byte by byte.
        let mut expected = Vec::new();
        let mut rest = data;
        let expected_end = loop {
            match parse_request(rest, &limits) {
                Ok(Some((args, used))) => {
                    assert!(used > 0 && used <= rest.len());
                    if !args.is_empty() {
                        expected.push(args);
                    }
                    rest = &rest[used..];
                }
                other => break other.map(|_| ()),
            }
        };
        let mut decoder = RequestDecoder::new(limits);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut got_end = Ok(());
        'feed: for byte in data {
            buf.extend_from_slice(&[*byte]);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(args)) => got.push(args),
                    Ok(None) => break,
                    Err(e) => {
                        got_end = Err(e);
                        break 'feed;
                    }
                }
            }
        }
        assert_eq!(got, expected);
        assert_eq!(got_end, expected_end);
    }
});
