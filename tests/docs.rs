//! The documents agree with the code: the LICENSE file is the license Cargo.toml names.

use std::fs;

#[test]
fn the_license_file_is_the_license_cargo_toml_names() {
    assert_eq!(env!("CARGO_PKG_LICENSE"), "MIT");
    let license = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/LICENSE"))
        .expect("a LICENSE file next to Cargo.toml");
    assert!(license.starts_with("MIT License\n"), "{license}");
    assert!(
        license.contains("Copyright (c) 2026 the mini-lambda-rust developers"),
        "{license}"
    );
    assert!(
        license.contains("THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND"),
        "{license}"
    );
}
