//! Kubernetes resource quantities (`125m`, `128Mi`, `1e3`), parsed exactly enough to compare.
//!
//! Values are held in nano-units as `i128`: every suffix up to `Ei` fits, and no floating
//! point rounding can make `1` and `1000m` differ.

/// A parsed quantity in units of 10^-9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(i128);

const NANO: i128 = 1_000_000_000;

impl Quantity {
    pub const ZERO: Quantity = Quantity(0);

    /// Parses the Kubernetes quantity grammar: `<sign><digits>[.<digits>]<suffix>` where the
    /// suffix is a binary SI suffix (`Ki`..`Ei`), a decimal one (`n u m k M G T P E`) or an
    /// exponent (`e3`, `E-2`).
    pub fn parse(s: &str) -> Option<Quantity> {
        let s = s.trim();
        let (negative, rest) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, suffix) = rest.split_at(number_end);
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        if frac_part.contains('.') || int_part.len() > 20 || frac_part.len() > 20 {
            return None;
        }
        // mantissa * 10^-frac_len
        let digits = format!("{int_part}{frac_part}");
        let mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().ok()?
        };
        let mut scale_pow10: i32 = -(frac_part.len() as i32);
        let mut multiplier: i128 = 1;
        match suffix {
            "" => {}
            "Ki" => multiplier = 1 << 10,
            "Mi" => multiplier = 1 << 20,
            "Gi" => multiplier = 1 << 30,
            "Ti" => multiplier = 1 << 40,
            "Pi" => multiplier = 1 << 50,
            "Ei" => multiplier = 1 << 60,
            "n" => scale_pow10 -= 9,
            "u" => scale_pow10 -= 6,
            "m" => scale_pow10 -= 3,
            "k" => scale_pow10 += 3,
            "M" => scale_pow10 += 6,
            "G" => scale_pow10 += 9,
            "T" => scale_pow10 += 12,
            "P" => scale_pow10 += 15,
            "E" => scale_pow10 += 18,
            exp if exp.starts_with(['e', 'E']) => {
                let e: i32 = exp[1..].parse().ok()?;
                if !(-30..=30).contains(&e) {
                    return None;
                }
                scale_pow10 += e;
            }
            _ => return None,
        }
        // value in nano units = mantissa * multiplier * 10^(scale_pow10 + 9)
        let pow = scale_pow10 + 9;
        let base = mantissa.checked_mul(multiplier)?;
        let nanos = if pow >= 0 {
            base.checked_mul(10i128.checked_pow(pow as u32)?)?
        } else {
            // Kubernetes rounds sub-precision values up.
            let div = 10i128.checked_pow((-pow) as u32)?;
            (base + div - 1) / div
        };
        // Kubernetes caps quantities at 2^63-1 of their base unit.
        if nanos > i128::from(i64::MAX) * NANO {
            return None;
        }
        Some(Quantity(if negative { -nanos } else { nanos }))
    }
}

#[cfg(test)]
mod tests {
    use super::Quantity;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap_or_else(|| panic!("{s} should parse"))
    }

    #[test]
    fn equal_spellings_compare_equal() {
        assert_eq!(q("1"), q("1000m"));
        assert_eq!(q("0.5"), q("500m"));
        assert_eq!(q("1Ki"), q("1024"));
        assert_eq!(q("1.5Gi"), q("1536Mi"));
        assert_eq!(q("1e3"), q("1k"));
        assert_eq!(q("128Mi"), q("134217728"));
    }

    #[test]
    fn ordering_follows_magnitude() {
        assert!(q("125m") < q("250m"));
        assert!(q("128Mi") > q("128M"));
        assert!(q("-1") < q("0"));
        assert!(q("1Ei") > q("1P"));
    }

    #[test]
    fn garbage_is_rejected() {
        for bad in ["", "abc", "1.2.3", "1Xi", "m", "1e", "--1", "1 Gi", "1e999"] {
            assert_eq!(Quantity::parse(bad), None, "{bad:?}");
        }
    }
}
