//! libvirt's scaled-integer units (`<memory unit='MiB'>`), as implemented by
//! libvirt's `virScaleInteger`: suffixes are case-insensitive, a bare letter
//! or `<letter>iB` is a power of 1024, `<letter>B` a power of 1000.

/// Why a unit conversion failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UnitError {
    /// The suffix is not one libvirt knows.
    UnknownUnit,
    /// The result does not fit in 64 bits of KiB.
    Overflow,
}

/// The unit names accepted, for error messages.
pub(super) const UNITS_HELP: &str =
    "use one of b, bytes, k/KiB, KB, M/MiB, MB, G/GiB, GB, T/TiB, TB, P/PiB, PB, E/EiB, EB";

/// Bytes per `unit`, or `None` if libvirt would refuse the suffix.
fn bytes_per_unit(unit: &str) -> Option<u128> {
    let unit = unit.to_ascii_lowercase();
    if matches!(unit.as_str(), "b" | "byte" | "bytes") {
        return Some(1);
    }
    let mut chars = unit.chars();
    let prefix = chars.next()?;
    let base: u128 = match chars.as_str() {
        "" | "ib" => 1024,
        "b" => 1000,
        _ => return None,
    };
    let exponent = match prefix {
        'k' => 1,
        'm' => 2,
        'g' => 3,
        't' => 4,
        'p' => 5,
        'e' => 6,
        _ => return None,
    };
    Some(base.pow(exponent))
}

/// Converts `value` expressed in `unit` to KiB, rounding up to a whole KiB.
/// An absent or empty unit means KiB, as in libvirt.
pub(super) fn to_kib(value: u64, unit: Option<&str>) -> Result<u64, UnitError> {
    let per_unit = match unit {
        None | Some("") => 1024,
        Some(unit) => bytes_per_unit(unit).ok_or(UnitError::UnknownUnit)?,
    };
    let bytes = u128::from(value) * per_unit;
    u64::try_from(bytes.div_ceil(1024)).map_err(|_| UnitError::Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_units() {
        assert_eq!(to_kib(2_097_152, None), Ok(2_097_152));
        assert_eq!(to_kib(2_097_152, Some("KiB")), Ok(2_097_152));
        assert_eq!(to_kib(4, Some("k")), Ok(4));
        assert_eq!(to_kib(256, Some("MiB")), Ok(262_144));
        assert_eq!(to_kib(256, Some("M")), Ok(262_144));
        assert_eq!(to_kib(2, Some("GiB")), Ok(2_097_152));
        assert_eq!(to_kib(2, Some("g")), Ok(2_097_152));
        assert_eq!(to_kib(1, Some("TiB")), Ok(1 << 30));
        assert_eq!(to_kib(1, Some("T")), Ok(1 << 30));
        // 1000 B = 0.98 KiB, rounded up.
        assert_eq!(to_kib(1, Some("KB")), Ok(1));
        assert_eq!(to_kib(1, Some("MB")), Ok(977));
        assert_eq!(to_kib(1, Some("GB")), Ok(976_563));
        assert_eq!(to_kib(1, Some("TB")), Ok(976_562_500));
        assert_eq!(to_kib(1, Some("mb")), Ok(977));
    }

    #[test]
    fn bytes_round_up() {
        assert_eq!(to_kib(1, Some("b")), Ok(1));
        assert_eq!(to_kib(1024, Some("bytes")), Ok(1));
        assert_eq!(to_kib(1025, Some("bytes")), Ok(2));
        assert_eq!(to_kib(0, Some("bytes")), Ok(0));
    }

    #[test]
    fn refuses_unknown_units_and_overflow() {
        for bad in ["KiBB", "x", "Kb2", "iB", "kilobytes"] {
            assert_eq!(to_kib(1, Some(bad)), Err(UnitError::UnknownUnit), "{bad}");
        }
        assert_eq!(to_kib(u64::MAX, Some("EiB")), Err(UnitError::Overflow));
        assert_eq!(to_kib(u64::MAX, Some("KiB")), Ok(u64::MAX));
    }
}
