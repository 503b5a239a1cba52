//! Tests of the US Privacy grammar: every valid string and each way to break one.
//!
//! Must not: test the categories an opt-out denies (`context.rs` does).

use crate::consent::*;

#[test]
fn us_privacy_every_form() {
    use UsPrivacyFlag::*;
    let flags = [('Y', Yes), ('N', No), ('-', NotApplicable)];
    for (a, fa) in flags {
        for (b, fb) in flags {
            for (c, fc) in flags {
                let s = format!("1{a}{b}{c}");
                let up = decode_us_privacy(&s).unwrap();
                assert_eq!((up.version, up.notice, up.opt_out_sale, up.lspa), (1, fa, fb, fc), "{s}");
                assert_eq!(up.is_applicable(), s != "1---", "{s}");
                assert_eq!(up.opted_out_of_sale(), b == 'Y', "{s}");
            }
        }
    }
    assert_eq!(decode_us_privacy("2YNN").unwrap_err(), ConsentError::UsPrivacyVersion('2'));
    assert_eq!(decode_us_privacy("1YN").unwrap_err(), ConsentError::UsPrivacyLength(3));
    assert_eq!(decode_us_privacy("1YNNN").unwrap_err(), ConsentError::UsPrivacyLength(5));
    assert_eq!(decode_us_privacy("").unwrap_err(), ConsentError::UsPrivacyLength(0));
    assert_eq!(
        decode_us_privacy("1YNé").unwrap_err(),
        ConsentError::UsPrivacyFlag { field: "LSPA (4th character)", found: 'é' }
    );
    assert!(matches!(decode_us_privacy("1ZNN").unwrap_err(), ConsentError::UsPrivacyFlag { found: 'Z', .. }));
    assert!(matches!(decode_us_privacy("1YxN").unwrap_err(), ConsentError::UsPrivacyFlag { found: 'x', .. }));
    assert!(matches!(decode_us_privacy("1yNN").unwrap_err(), ConsentError::UsPrivacyFlag { found: 'y', .. }));
    let msg = decode_us_privacy("1ZNN").unwrap_err().to_string();
    assert!(msg.contains("notice") && msg.contains('Z'), "{msg}");
}
