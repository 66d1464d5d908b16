//! Helpers shared by the codec's unit tests, and properties across both directions.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

pub(super) fn limits() -> Limits {
    Limits::default()
}

pub(super) fn args(list: &[&[u8]]) -> Vec<Bytes> {
    list.iter().map(|a| Bytes::copy_from_slice(a)).collect()
}

pub(super) fn encoded(frame: &Frame) -> Vec<u8> {
    let mut out = BytesMut::new();
    frame.encode(&mut out);
    out.to_vec()
}

pub(super) fn request(list: &[&[u8]]) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_request(list, &mut out);
    out.to_vec()
}

// --- properties ---------------------------------------------------------------------------

fn line_text() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..24).prop_map(|mut bytes| {
        for b in &mut bytes {
            if *b == b'\r' || *b == b'\n' {
                *b = b' ';
            }
        }
        Bytes::from(bytes)
    })
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let leaf = prop_oneof![
        line_text().prop_map(Frame::Simple),
        line_text().prop_map(Frame::Error),
        any::<i64>().prop_map(Frame::Integer),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| Frame::Bulk(b.into())),
        Just(Frame::Null),
        Just(Frame::NullArray),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        proptest::collection::vec(inner, 0..6).prop_map(Frame::Array)
    })
}

fn chunks(bytes: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let size = sizes.next().copied().unwrap_or(1).clamp(1, rest.len());
        let (head, tail) = rest.split_at(size);
        out.push(head.to_vec());
        rest = tail;
    }
    out
}

/// Quotes an argument for an inline command with the escapes `sdssplitargs` understands.
fn quote(arg: &[u8]) -> String {
    let mut out = String::from("\"");
    for &b in arg {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            b'\n' => out.push_str("\\n"),
            0x21..=0x7e | b' ' => out.push(char::from(b)),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frames_round_trip(frame in arb_frame(), sizes in proptest::collection::vec(1usize..16, 1..4)) {
        let bytes = encoded(&frame);
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        prop_assert_eq!(frame_len(&bytes, &limits()), Ok(Some(bytes.len())));
        prop_assert_eq!(parse_frame(&bytes, &limits()), Ok(Some((frame.clone(), bytes.len()))));
        let mut scanner = FrameScanner::new();
        let mut buf = Vec::new();
        let mut result = Ok(None);
        for chunk in chunks(&bytes, &sizes) {
            prop_assert_eq!(result, Ok(None));
            buf.extend_from_slice(&chunk);
            result = scanner.scan(&buf, &limits());
        }
        prop_assert_eq!(result, Ok(Some(bytes.len())));
    }

    #[test]
    fn requests_round_trip(
        requests in proptest::collection::vec(
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..20), 1..6), 1..4),
        sizes in proptest::collection::vec(1usize..32, 1..4),
    ) {
        let mut stream = Vec::new();
        for request in &requests {
            encode_request(request, &mut BytesMut::new());
            let mut out = BytesMut::new();
            encode_request(request, &mut out);
            stream.extend_from_slice(&out);
        }
        // One shot, request by request.
        let mut rest = &stream[..];
        for request in &requests {
            let (got, used) = parse_request(rest, &limits()).unwrap().unwrap();
            prop_assert_eq!(&got, request);
            rest = &rest[used..];
        }
        prop_assert!(rest.is_empty());
        // Incrementally, in chunks.
        let mut decoder = RequestDecoder::default();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in chunks(&stream, &sizes) {
            buf.extend_from_slice(&chunk);
            while let Some(request) = decoder.decode(&mut buf).unwrap() {
                got.push(request.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
            }
        }
        prop_assert_eq!(got, requests);
    }

    #[test]
    fn quoted_inline_arguments_round_trip(args in proptest::collection::vec(
        proptest::collection::vec(any::<u8>(), 0..12), 1..5)
    ) {
        let line: Vec<String> = args.iter().map(|a| quote(a)).collect();
        let line = format!("{}\r\n", line.join(" "));
        let (got, used) = parse_request(line.as_bytes(), &limits()).unwrap().unwrap();
        prop_assert_eq!(used, line.len());
        prop_assert_eq!(got.iter().map(|a| a.to_vec()).collect::<Vec<_>>(), args);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let small = Limits { max_bulk_len: 16, max_array_len: 8, max_depth: 3, max_inline_len: 16 };
        for limits in [limits(), small] {
            if let Ok(Some((_, used))) = parse_request(&bytes, &limits) {
                prop_assert!(used <= bytes.len());
            }
            let len = frame_len(&bytes, &limits);
            if let Ok(Some(used)) = len {
                prop_assert!(used <= bytes.len());
            }
            // parse_frame decides exactly as frame_len does.
            prop_assert_eq!(parse_frame(&bytes, &limits).map(|f| f.map(|(_, n)| n)), len);
            let mut buf = BytesMut::from(&bytes[..]);
            let _ = RequestDecoder::new(limits).decode(&mut buf);
        }
    }
}
