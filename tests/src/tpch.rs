//! TPC-H tables generated with tpchgen, written as Parquet, several files per
//! table so every scan has more than one input partition.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use arrow::record_batch::RecordBatchReader;
use ignis_core::job::{Format, TableOptions, TableSpec};
use parquet::arrow::ArrowWriter;
use tpchgen::generators::{
    CustomerGenerator, LineItemGenerator, NationGenerator, OrderGenerator, PartGenerator, PartSuppGenerator,
    RegionGenerator, SupplierGenerator,
};
use tpchgen_arrow::{
    CustomerArrow, LineItemArrow, NationArrow, OrderArrow, PartArrow, PartSuppArrow, RegionArrow, SupplierArrow,
};

pub const TABLES: [&str; 8] = ["customer", "lineitem", "nation", "orders", "part", "partsupp", "region", "supplier"];

/// One part (1-based) of `parts` of a table, as Arrow batches.
fn table_part(table: &str, scale: f64, part: i32, parts: i32) -> Box<dyn RecordBatchReader + Send> {
    match table {
        "customer" => Box::new(CustomerArrow::new(CustomerGenerator::new(scale, part, parts))),
        "lineitem" => Box::new(LineItemArrow::new(LineItemGenerator::new(scale, part, parts))),
        "nation" => Box::new(NationArrow::new(NationGenerator::new(scale, part, parts))),
        "orders" => Box::new(OrderArrow::new(OrderGenerator::new(scale, part, parts))),
        "part" => Box::new(PartArrow::new(PartGenerator::new(scale, part, parts))),
        "partsupp" => Box::new(PartSuppArrow::new(PartSuppGenerator::new(scale, part, parts))),
        "region" => Box::new(RegionArrow::new(RegionGenerator::new(scale, part, parts))),
        _ => Box::new(SupplierArrow::new(SupplierGenerator::new(scale, part, parts))),
    }
}

/// Write every TPC-H table under `dir/{table}/part-{i}.parquet` (skipped when
/// already there) and return the tables as job table specs.
pub fn generate(dir: &Path, scale: f64, files: i32) -> anyhow::Result<BTreeMap<String, TableSpec>> {
    let mut tables = BTreeMap::new();
    for table in TABLES {
        let table_dir = dir.join(table);
        // nation and region are tiny and fixed: one file.
        let parts = if matches!(table, "nation" | "region") { 1 } else { files };
        if !table_dir.join(format!("part-{parts}.parquet")).exists() {
            std::fs::create_dir_all(&table_dir)?;
            for part in 1..=parts {
                let reader = table_part(table, scale, part, parts);
                let path = table_dir.join(format!("part-{part}.parquet"));
                let file = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
                let mut writer = ArrowWriter::try_new(file, reader.schema(), None)?;
                for batch in reader {
                    writer.write(&batch?)?;
                }
                writer.close()?;
            }
        }
        let location = url::Url::from_directory_path(&table_dir)
            .map_err(|()| anyhow::anyhow!("not an absolute path: {}", table_dir.display()))?
            .to_string();
        tables.insert(table.to_string(), TableSpec::files_at(Format::Parquet, location, TableOptions::default()));
    }
    Ok(tables)
}
