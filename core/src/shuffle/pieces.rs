//! Piece tables: where every reduce partition's pieces are, stored once per
//! stage in object storage, for stages of many map tasks.
//!
//! A reduce task of a stage with thousands of map tasks reads a piece from
//! each; listing them inline would make every task request grow with the
//! number of map tasks (and the driver hold them all, once per task). Past
//! [`STORE_ABOVE_MAPS`] map tasks the driver writes the stage's pieces once,
//! partition after partition, as protobuf, and a task request carries only
//! the byte range of the partitions it reads ([`StoredPieces`]); the
//! executor fetches those ranges before it runs the task.

use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::PutPayload;
use prost::Message;

use crate::error::{IgnisError, Result};
use crate::protocol::{PieceLocation, PieceMeta, StageInput, StoredPieces};
use crate::store;

/// Map tasks above which a stage's pieces go to a stored table.
pub const STORE_ABOVE_MAPS: usize = 256;

#[derive(Clone, PartialEq, prost::Message)]
struct PieceTable {
    #[prost(message, repeated, tag = "1")]
    pieces: Vec<StoredPiece>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredPiece {
    /// The map task (partition) and attempt whose object holds the piece.
    #[prost(uint32, tag = "1")]
    map: u32,
    #[prost(uint32, tag = "2")]
    attempt: u32,
    #[prost(uint64, tag = "3")]
    offset: u64,
    #[prost(uint64, tag = "4")]
    length: u64,
    #[prost(uint64, tag = "5")]
    rows: u64,
    /// Further ranges, (offset, length) pairs flattened.
    #[prost(uint64, repeated, tag = "6")]
    more: Vec<u64>,
}

/// The name of map `map`'s attempt `attempt` object under `objects`.
fn object_url(objects: &str, map: u32, attempt: u32) -> String {
    format!("{objects}{map}.{attempt}.arrows")
}

/// One map task's output: its partition, attempt, object URL and pieces.
pub struct MapOutput<'a> {
    pub map: u32,
    pub attempt: u32,
    pub url: &'a str,
    pub pieces: &'a [PieceMeta],
}

/// Write the table of `maps`' pieces for `partitions` hash-split reduce
/// partitions (piece r of every map for partition r) at `url`. `objects` is
/// the prefix every map object's URL is made from; `None` if one is not
/// (then the pieces must be sent inline).
pub async fn write_table(
    env: &RuntimeEnv,
    url: &str,
    objects: &str,
    maps: &[MapOutput<'_>],
    partitions: usize,
) -> Result<Option<StoredPieces>> {
    if maps.iter().any(|m| m.url != object_url(objects, m.map, m.attempt)) {
        return Ok(None);
    }
    let stored = |m: &MapOutput<'_>, p: &PieceMeta| StoredPiece {
        map: m.map,
        attempt: m.attempt,
        offset: p.offset,
        length: p.length,
        rows: p.rows,
        more: p.more.iter().flatten().copied().collect(),
    };
    let mut bytes = Vec::new();
    let mut ranges = Vec::with_capacity(partitions);
    for r in 0..partitions {
        let mut pieces = Vec::with_capacity(maps.len());
        for m in maps {
            let p = m
                .pieces
                .get(r)
                .ok_or_else(|| IgnisError::internal(format!("map task {} has no piece for partition {r}", m.map)))?;
            pieces.push(stored(m, p));
        }
        let start = bytes.len() as u64;
        PieceTable { pieces }.encode(&mut bytes).map_err(|e| IgnisError::internal(e.to_string()))?;
        ranges.push(Some([start, bytes.len() as u64 - start]));
    }
    store::write(env, url, PutPayload::from(bytes)).await?;
    Ok(Some(StoredPieces { url: url.to_owned(), objects: objects.to_owned(), ranges }))
}

/// Fill in the partitions of `input` that a stored table lists, fetching
/// their ranges (one request).
pub async fn resolve(env: &Arc<RuntimeEnv>, input: &mut StageInput) -> Result<()> {
    let Some(stored) = input.stored.take() else { return Ok(()) };
    let wanted: Vec<(usize, [u64; 2])> =
        stored.ranges.iter().enumerate().filter_map(|(p, r)| r.map(|r| (p, r))).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let (object_store, path) = store::resolve(env, &stored.url)?;
    let ranges: Vec<std::ops::Range<u64>> = wanted.iter().map(|(_, [o, l])| *o..o + l).collect();
    let parts = object_store.get_ranges(&path, &ranges).await?;
    if input.partitions.len() < stored.ranges.len() {
        input.partitions.resize(stored.ranges.len(), None);
    }
    for ((partition, _), bytes) in wanted.into_iter().zip(parts) {
        let table =
            PieceTable::decode(bytes).map_err(|e| IgnisError::Protocol(format!("piece table {}: {e}", stored.url)))?;
        let pieces = table
            .pieces
            .into_iter()
            .map(|p| PieceLocation {
                url: object_url(&stored.objects, p.map, p.attempt),
                offset: p.offset,
                length: p.length,
                rows: p.rows,
                more: p.more.chunks_exact(2).map(|c| [c[0], c[1]]).collect(),
            })
            .collect();
        input.partitions[partition] = Some(pieces);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::StageId;

    #[tokio::test]
    async fn a_stored_table_gives_back_each_partitions_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let root = url::Url::from_directory_path(dir.path()).unwrap().to_string();
        let objects = format!("{root}job-1/1/");
        let urls: Vec<String> = (0..3).map(|m| object_url(&objects, m, m % 2)).collect();
        let metas: Vec<Vec<PieceMeta>> = (0..3u64)
            .map(|m| {
                (0..2u64)
                    .map(|r| PieceMeta {
                        offset: r * 10,
                        length: 10,
                        rows: m + r,
                        more: if m == 1 { vec![[100, 5]] } else { vec![] },
                    })
                    .collect()
            })
            .collect();
        let maps: Vec<MapOutput<'_>> = (0..3)
            .map(|m| MapOutput { map: m, attempt: m % 2, url: &urls[m as usize], pieces: &metas[m as usize] })
            .collect();
        let env = store::runtime_env();
        let table = format!("{root}job-1/1/pieces");
        let stored = write_table(&env, &table, &objects, &maps, 2).await.unwrap().unwrap();

        // A task reading partition 1 only.
        let mut wanted = stored.clone();
        wanted.ranges[0] = None;
        let mut input = StageInput { stage_id: StageId(1), partitions: vec![None, None], stored: Some(wanted) };
        resolve(&env, &mut input).await.unwrap();
        assert_eq!(input.partitions[0], None);
        let expected: Vec<PieceLocation> = (0..3).map(|m| PieceLocation::new(&urls[m], &metas[m][1])).collect();
        assert_eq!(input.partitions[1].as_ref(), Some(&expected));

        // A map object not named after the template cannot be stored.
        let odd = MapOutput { map: 0, attempt: 0, url: "file:///elsewhere/0.0.arrows", pieces: &metas[0] };
        assert!(write_table(&env, &table, &objects, &[odd], 2).await.unwrap().is_none());
    }
}
