//! The tokens file and the `authorization` header check: any text is a file
//! that parses or is refused with an error naming a line (never a token);
//! any header is accepted only if it carries a listed token, and then with
//! that token's tenant.
//!
//! Input: a tokens file, a 0xff byte, then an `authorization` header value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_collector::security::tokens::Tokens;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let (file, header) = match data.iter().position(|b| *b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(file) else { return };
    match Tokens::parse(text, Path::new("tokens")) {
        Err(e) => {
            assert!(e.starts_with("tokens line "), "{e}");
            // The offending line's token (first field) is never echoed back.
            let line: usize = e["tokens line ".len()..].split(':').next().unwrap().parse().unwrap();
            let token = text.lines().nth(line - 1).and_then(|l| l.split_whitespace().next()).unwrap_or("");
            if token.len() >= 8 {
                assert!(!e.contains(token), "the error repeats the token: {e}");
            }
        }
        Ok(tokens) => {
            if let Ok(tenant) = tokens.check(Some(header)) {
                // Accepted: the header names a token of the file, with its tenant.
                let h = std::str::from_utf8(header).unwrap().trim();
                let token = h.split_once(' ').unwrap().1.trim_start();
                let listed = text.lines().map(str::trim).filter(|l| !l.starts_with('#')).find_map(|l| {
                    let mut f = l.split_whitespace();
                    (f.next() == Some(token)).then(|| f.next())
                });
                assert_eq!(listed, Some(tenant), "accepted a token the file does not list, or with another tenant");
            }
        }
    }
});
