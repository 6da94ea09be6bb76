//! Admin API request bodies: every validator of every dialect over one JSON body. No panic, and
//! what is accepted is usable (label policies and times parse again, subnets are CIDRs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use obsgate::store::load::load_texts;
use std::path::Path;
use std::sync::OnceLock;

static SNAP: OnceLock<obsgate::store::Snapshot> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let snap = SNAP.get_or_init(|| {
        load_texts(
            &[(Path::new("p.yaml"), "tenants:\n  - name: team-a\n  - name: team-b\n")],
            "local",
        )
        .expect("fixed policy file loads")
    });
    obsgate::admin::fuzz_bodies(snap, data);
});
