//! US Privacy: decodes an IAB US Privacy (CCPA) string such as `1YNN`.
//!
//! Owns: the US Privacy grammar (version `1`, then notice, opt-out of sale and LSPA, each `Y`,
//! `N` or `-`). Must not: decide which categories an opt-out denies (`categories` does).

use super::ConsentError;

/// One US Privacy signal: `Y`, `N` or `-` (not applicable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsPrivacyFlag {
    Yes,
    No,
    NotApplicable,
}

impl UsPrivacyFlag {
    fn parse(c: char, field: &'static str) -> Result<Self, ConsentError> {
        match c {
            'Y' => Ok(UsPrivacyFlag::Yes),
            'N' => Ok(UsPrivacyFlag::No),
            '-' => Ok(UsPrivacyFlag::NotApplicable),
            found => Err(ConsentError::UsPrivacyFlag { field, found }),
        }
    }
}

/// A decoded IAB US Privacy (CCPA) string, e.g. `1YNN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsPrivacy {
    /// Specification version (always 1: others are rejected).
    pub version: u8,
    /// Explicit notice / opportunity to opt out given.
    pub notice: UsPrivacyFlag,
    /// The user opted out of the sale of personal information.
    pub opt_out_sale: UsPrivacyFlag,
    /// The publisher is a signatory of the IAB Limited Service Provider Agreement.
    pub lspa: UsPrivacyFlag,
}

impl UsPrivacy {
    /// False for `1---`: CCPA does not apply to this user.
    pub fn is_applicable(&self) -> bool {
        !(self.notice == UsPrivacyFlag::NotApplicable
            && self.opt_out_sale == UsPrivacyFlag::NotApplicable
            && self.lspa == UsPrivacyFlag::NotApplicable)
    }

    /// The user opted out of sale (`Y` in the third position).
    pub fn opted_out_of_sale(&self) -> bool {
        self.opt_out_sale == UsPrivacyFlag::Yes
    }
}

/// Decodes a US Privacy string: exactly 4 characters, version `1`, then notice, opt-out of sale
/// and LSPA, each `Y`, `N` or `-` (upper case only, as the IAB specifies).
pub fn decode_us_privacy(s: &str) -> Result<UsPrivacy, ConsentError> {
    let mut chars = s.chars();
    let (Some(v), Some(n), Some(o), Some(l), None) =
        (chars.next(), chars.next(), chars.next(), chars.next(), chars.next())
    else {
        return Err(ConsentError::UsPrivacyLength(s.chars().count()));
    };
    if v != '1' {
        return Err(ConsentError::UsPrivacyVersion(v));
    }
    Ok(UsPrivacy {
        version: 1,
        notice: UsPrivacyFlag::parse(n, "notice (2nd character)")?,
        opt_out_sale: UsPrivacyFlag::parse(o, "opt-out of sale (3rd character)")?,
        lspa: UsPrivacyFlag::parse(l, "LSPA (4th character)")?,
    })
}
