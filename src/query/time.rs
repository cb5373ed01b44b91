//! Timestamps as people write them: RFC 3339 in UTC (`2026-11-22T05:00:00Z`, fractions of a
//! second allowed) or plain µs since the Unix epoch.

/// Formats µs since the epoch as RFC 3339 UTC with microseconds.
pub fn format_rfc3339(ts_us: u64) -> String {
    let seconds = ts_us / 1_000_000;
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        ts_us % 1_000_000
    )
}

/// Parses RFC 3339 UTC (`Z` or `+00:00`) or an integer number of µs.
pub fn parse_time(text: &str) -> Result<u64, String> {
    if let Ok(us) = text.parse::<u64>() {
        return Ok(us);
    }
    let bad = || {
        format!(
            "{} is neither µs since the epoch nor RFC 3339 UTC like 2026-11-22T05:00:00Z",
            crate::domain::quote(text)
        )
    };
    let body = text
        .strip_suffix('Z')
        .or_else(|| text.strip_suffix("+00:00"))
        .ok_or_else(bad)?;
    let (date, time) = body.split_once(['T', ' ']).ok_or_else(bad)?;
    let mut date_parts = date.split('-').map(|p| p.parse::<i64>().map_err(|_| bad()));
    let (year, month, day) = (
        date_parts.next().ok_or_else(bad)??,
        date_parts.next().ok_or_else(bad)??,
        date_parts.next().ok_or_else(bad)??,
    );
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut clock_parts = clock.split(':').map(|p| p.parse::<u64>().map_err(|_| bad()));
    let (hour, minute, second) = (
        clock_parts.next().ok_or_else(bad)??,
        clock_parts.next().ok_or_else(bad)??,
        clock_parts.next().ok_or_else(bad)??,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 || year < 1970
    {
        return Err(bad());
    }
    if fraction.len() > 9 || !fraction.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let micros = format!("{fraction:0<6}")[..6].parse::<u64>().map_err(|_| bad())?;
    let days = days_from_civil(year, month, day);
    Ok(((days as u64 * 86_400) + hour * 3600 + minute * 60 + second) * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
