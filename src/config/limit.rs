//! Limits on the command line: whole numbers of at least 1.
//!
//! A limit of 0 would start a server that refuses every file, every upload or every
//! connection, which no one means: it is refused at start, with what to write instead.

/// clap's parser for a limit flag: a whole number of at least 1 that fits `T`.
pub fn at_least_one<T: TryFrom<u64>>(text: &str) -> Result<T, String> {
    let digits = text.trim().replace('_', "");
    let value: u64 = digits.parse().map_err(|_| {
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            format!("{text} is too large for this limit")
        } else {
            format!("'{text}' is not a whole number; write one such as 8")
        }
    })?;
    if value == 0 {
        return Err("must be at least 1: a limit of 0 would refuse everything".to_owned());
    }
    T::try_from(value).map_err(|_| format!("{value} is too large for this limit"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_whole_numbers_of_at_least_one() {
        assert_eq!(at_least_one::<u64>("209_715_200"), Ok(209_715_200));
        assert_eq!(at_least_one::<usize>("8"), Ok(8));
        assert!(at_least_one::<u64>("0").unwrap_err().contains("at least 1"));
        assert!(
            at_least_one::<u64>("-1")
                .unwrap_err()
                .contains("not a whole number")
        );
        assert!(
            at_least_one::<u32>("4294967296")
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            at_least_one::<u64>("99999999999999999999999")
                .unwrap_err()
                .contains("too large")
        );
    }
}
