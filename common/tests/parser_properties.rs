//! The parsers of what clients send, fed what proptest makes up (mostly near their grammar,
//! so cases get past the first byte): none panics, and what each accepts keeps its promise.
//! A range never reaches past its object; an accepted request head has no body, is whole
//! within the bytes it says it took, and no shorter prefix of it was taken as a head; a token
//! opens only with the claims it was signed with. `PROPTEST_CASES=100000 cargo test -p
//! cadenza-common --test parser_properties` searches longer.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use cadenza_common::http::h1::parse_head;
use cadenza_common::http::{plan_span, range_plan};
use cadenza_common::{
    FileId, RangeRequest, SigningKey, Territories, TokenClaims, VerifyingKeys, parse_range,
};
use http::header::{IF_NONE_MATCH, IF_RANGE, RANGE};
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

/// Range header values: mostly `bytes=` with one to three specs (`a-b`, `a-`, `-n`; numbers
/// small, large, or too long for a u64), spaces here and there; sometimes any bytes at all.
fn range_like() -> impl Strategy<Value = Vec<u8>> {
    let number = prop_oneof![
        4 => (0u64..6000).prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => "[0-9]{20,30}",
        1 => Just(String::new()),
    ];
    let spec = prop_oneof![
        (number.clone(), number.clone()).prop_map(|(a, b)| format!("{a}-{b}")),
        number.clone().prop_map(|a| format!("{a}-")),
        number.prop_map(|n| format!("-{n}")),
    ];
    let unit = prop_oneof![8 => Just("bytes="), 1 => Just("bytes = "), 1 => Just("items=")];
    let space = prop_oneof![4 => Just(""), 1 => Just(" ")];
    let made = (unit, prop::collection::vec((spec, space), 1..4)).prop_map(|(unit, specs)| {
        let specs: Vec<String> = specs
            .into_iter()
            .map(|(s, sp)| format!("{sp}{s}"))
            .collect();
        format!("{unit}{}", specs.join(",")).into_bytes()
    });
    prop_oneof![
        6 => made,
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

/// Object lengths, small ones (where ends and overflows meet) more often than not.
fn lengths() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..4096, any::<u64>(), Just(u64::MAX)]
}

/// A request head near HTTP/1.1's grammar: mostly a good request line, a Host, other fields
/// (now and then one that carries a body), the blank line, then bytes of a next request;
/// each part sometimes wrong, and sometimes a few bytes changed.
fn head_like() -> impl Strategy<Value = Vec<u8>> {
    let method = prop_oneof![
        6 => prop_oneof![Just("GET".to_owned()), Just("HEAD".to_owned())],
        1 => Just("POST".to_owned()),
        1 => "[ -~]{0,8}",
    ];
    let target = prop_oneof![
        6 => "/[a-z0-9/?=&%.]{0,24}",
        1 => Just("http://edge.example/a/x".to_owned()),
        1 => Just("*".to_owned()),
        1 => "[ -~]{0,24}",
    ];
    let version = prop_oneof![
        6 => Just("HTTP/1.1".to_owned()),
        2 => Just("HTTP/1.0".to_owned()),
        1 => "[ -~]{0,10}",
    ];
    let host = prop::option::weighted(0.85, "[a-z0-9.:]{0,20}".prop_map(|h| format!("Host: {h}")));
    let name = prop_oneof![
        4 => prop_oneof![
            Just("Connection".to_owned()),
            Just("Range".to_owned()),
            Just("Accept".to_owned()),
            Just("Host".to_owned()),
        ],
        1 => prop_oneof![
            Just("Content-Length".to_owned()),
            Just("Transfer-Encoding".to_owned()),
        ],
        2 => "[A-Za-z-]{1,12}",
        1 => "[ -~]{0,12}",
    ];
    let value = prop_oneof![
        1 => "[0-9]{1,3}",
        1 => Just("close".to_owned()),
        1 => Just("keep-alive".to_owned()),
        1 => Just("chunked".to_owned()),
        4 => "[!-~][ -~]{0,23}",
        1 => "[\\x00-\\xff]{0,8}",
    ];
    let field = (name, value).prop_map(|(n, v)| format!("{n}: {v}"));
    let eol = prop_oneof![8 => Just("\r\n"), 2 => Just("\n"), 1 => Just("\r")];
    let blank = prop_oneof![6 => Just(true), 1 => Just(false)];
    let flips = prop_oneof![
        3 => Just(Vec::new()),
        1 => prop::collection::vec((any::<usize>(), any::<u8>()), 1..3),
    ];
    (
        (method, target, version, host),
        prop::collection::vec(field, 0..6),
        (eol, blank),
        "[ -~]{0,16}",
        flips,
    )
        .prop_map(
            |((method, target, version, host), fields, (eol, blank), next, flips)| {
                let mut head = format!("{method} {target} {version}{eol}");
                for field in host.into_iter().chain(fields) {
                    head.push_str(&field);
                    head.push_str(eol);
                }
                if blank {
                    head.push_str(eol);
                }
                head.push_str(&next);
                let mut bytes = head.into_bytes();
                for (at, byte) in flips {
                    if !bytes.is_empty() {
                        let at = at % bytes.len();
                        bytes[at] = byte;
                    }
                }
                bytes
            },
        )
}

proptest! {
    #[test]
    fn a_range_never_reaches_past_its_object(header in range_like(), len in lengths()) {
        if let RangeRequest::Partial(range) = parse_range(Some(&header), len) {
            prop_assert!(range.start <= range.end && range.end < len, "{range:?} of {len}");
        }
    }

    #[test]
    fn a_planned_answer_lies_within_its_object(
        range in range_like(),
        if_range in range_like(),
        if_none_match in range_like(),
        which in 0u8..8,
        len in lengths(),
    ) {
        let mut headers = HeaderMap::new();
        for (bit, name, value) in [(1, RANGE, &range), (2, IF_RANGE, &if_range), (4, IF_NONE_MATCH, &if_none_match)] {
            if which & bit != 0 && let Ok(value) = HeaderValue::from_bytes(value) {
                headers.insert(name, value);
            }
        }
        if let Some((offset, length)) = plan_span(range_plan(&headers, len, "etag"), len) {
            prop_assert!(offset.checked_add(length).is_some_and(|end| end <= len));
        }
    }

    #[test]
    fn an_accepted_head_is_whole_bodiless_and_not_taken_early(bytes in head_like()) {
        let Ok(Some(head)) = parse_head(&bytes) else {
            return Ok(());
        };
        prop_assert!(head.len <= bytes.len());
        let again = parse_head(&bytes[..head.len]).unwrap().unwrap();
        prop_assert_eq!(again.len, head.len);
        // The loop reads more while a head is incomplete: a shorter prefix must never have
        // been a head of its own.
        for cut in 0..head.len {
            let early = parse_head(&bytes[..cut]);
            prop_assert!(!matches!(early, Ok(Some(_))), "taken at {cut} of {}", head.len);
        }
        let headers = &head.parts.headers;
        prop_assert!(!headers.contains_key(http::header::TRANSFER_ENCODING));
        for length in headers.get_all(http::header::CONTENT_LENGTH) {
            prop_assert_eq!(length.to_str().ok().and_then(|v| v.parse::<u64>().ok()), Some(0));
        }
        if head.parts.version == http::Version::HTTP_11 {
            prop_assert!(headers.contains_key(http::header::HOST));
        }
    }

    #[test]
    fn any_bytes_as_a_head_are_answered_without_panicking(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = parse_head(&bytes);
    }
}

/// The edge's verifier, holding `key`'s public half.
fn verifier(key: &SigningKey, public: Vec<u8>) -> VerifyingKeys {
    let mut keys = VerifyingKeys::default();
    keys.insert(key.kid(), public);
    keys
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn a_token_opens_only_as_signed(flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..4), cut in any::<usize>()) {
        let (key, _) = SigningKey::generate("k1").unwrap();
        let public = key.public_key();
        let keys = verifier(&key, public);
        let claims = TokenClaims {
            file_id: FileId::random(),
            expires_at: 4_000_000_000,
            territories: "GB,US".parse::<Territories>().unwrap(),
        };
        let token = key.sign(&claims).0;
        prop_assert_eq!(keys.verify_signature(&token).unwrap(), claims.clone());
        let mut damaged = token.clone().into_bytes();
        for (at, byte) in flips {
            let at = at % damaged.len();
            damaged[at] = byte;
        }
        let damaged = String::from_utf8_lossy(&damaged).into_owned();
        let short = &token[..cut % token.len()];
        for attempt in [damaged.as_str(), short] {
            if let Ok(opened) = keys.verify_signature(attempt) {
                // Only a change that decodes to the same signed bytes can still open it.
                prop_assert_eq!(&opened, &claims);
            }
        }
    }

    #[test]
    fn any_text_as_a_token_is_refused(text in "[ -~]{0,200}|v1\\.k1\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,90}") {
        let (key, _) = SigningKey::generate("k1").unwrap();
        let public = key.public_key();
        prop_assert!(verifier(&key, public).verify_signature(&text).is_err());
    }
}

/// How many of `n` values drawn from `strategy` pass `accepted`: so a property above is not
/// vacuous, its generator must reach what the parser accepts.
fn reached<T: std::fmt::Debug>(
    strategy: impl Strategy<Value = T>,
    n: usize,
    accepted: impl Fn(&T) -> bool,
) -> usize {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    (0..n)
        .filter(|_| accepted(&strategy.new_tree(&mut runner).unwrap().current()))
        .count()
}

#[test]
fn the_generators_reach_what_the_parsers_accept() {
    let heads = reached(head_like(), 1000, |bytes| {
        matches!(parse_head(bytes), Ok(Some(_)))
    });
    let ranges = reached((range_like(), 1u64..4096), 1000, |(header, len)| {
        matches!(parse_range(Some(header), *len), RangeRequest::Partial(_))
    });
    eprintln!("of 1,000 each: {heads} heads accepted, {ranges} partial ranges");
    assert!(
        heads >= 50 && ranges >= 50,
        "{heads} heads, {ranges} ranges"
    );
}
