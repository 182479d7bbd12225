//! Deterministic example data: the orders table of `examples/orders`, at any
//! size, the same bytes for the same seed on every machine.

use std::io::Write;
use std::path::Path;

const COUNTRIES: [(&str, u32); 8] =
    [("US", 30), ("DE", 12), ("FR", 10), ("GB", 10), ("JP", 10), ("BR", 10), ("IN", 10), ("CA", 8)];
const PRODUCTS: [&str; 12] = [
    "laptop",
    "phone",
    "tablet",
    "monitor",
    "keyboard",
    "mouse",
    "headphones",
    "camera",
    "printer",
    "router",
    "speaker",
    "charger",
];
pub const HEADER: &str = "order_id,country,product,quantity,price,ts";

/// A small, fast, deterministic generator (splitmix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Write `rows` orders split over `files` CSV files `orders-{i}.csv` in `dir`.
pub fn write_orders(dir: &Path, rows: u64, files: u32, seed: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let files = files.max(1) as u64;
    let weight_total: u32 = COUNTRIES.iter().map(|(_, w)| w).sum();
    let mut rng = Rng(seed);
    let mut order_id = 1u64;
    for f in 0..files {
        let count = rows / files + u64::from(f < rows % files);
        let file = std::fs::File::create(dir.join(format!("orders-{f}.csv")))?;
        let mut out = std::io::BufWriter::new(file);
        writeln!(out, "{HEADER}")?;
        for _ in 0..count {
            let mut pick = rng.below(u64::from(weight_total)) as u32;
            let country = COUNTRIES
                .iter()
                .find(|(_, w)| {
                    let hit = pick < *w;
                    pick = pick.saturating_sub(*w);
                    hit
                })
                .map(|(c, _)| *c)
                .unwrap_or("US");
            let product = PRODUCTS[rng.below(PRODUCTS.len() as u64) as usize];
            let quantity = 1 + rng.below(10);
            let cents = 50 + rng.below(50_000);
            // 2026-01-01T00:00:00Z plus up to a year.
            let ts = 1_767_225_600 + rng.below(365 * 86_400) as i64;
            writeln!(
                out,
                "{order_id},{country},{product},{quantity},{}.{:02},{}",
                cents / 100,
                cents % 100,
                format_ts(ts)
            )?;
            order_id += 1;
        }
        out.flush()?;
    }
    Ok(())
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SS` (UTC).
fn format_ts(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_iso_dates() {
        assert_eq!(format_ts(0), "1970-01-01T00:00:00");
        assert_eq!(format_ts(1_767_225_600), "2026-01-01T00:00:00");
        assert_eq!(format_ts(951_782_400 + 3661), "2000-02-29T01:01:01");
    }
}
