//! Domain XML import (`tern define`, `--xml`): never panics, and a domain
//! that imports and validates exports to XML that imports to the same
//! domain (the property the importer documents).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_model::xml::{parse_domain, to_xml, validate};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_domain(s) {
        if validate(&d).is_ok() {
            let x = to_xml(&d);
            let again = parse_domain(&x).unwrap_or_else(|e| panic!("export does not import: {e}\n{x}"));
            assert_eq!(again, d, "round trip changed the domain:\n{x}");
        }
    }
});
