//! Shuffle through object storage.
//!
//! A map task writes one object, `{root}/{job}/{stage}/{partition}.{attempt}.arrows`,
//! holding R consecutive Arrow IPC streams, one per reduce partition. Its
//! [`crate::protocol::TaskResult`] carries each stream's (offset, length, rows);
//! a reduce task fetches its piece of every map output with a ranged GET. The
//! object count is O(maps), not O(maps x reducers).

pub mod pieces;
mod reader;
mod writer;

pub use reader::ShuffleReaderExec;
pub use writer::ShuffleWriterExec;

use crate::ids::{JobId, StageId};
use crate::store;

/// The URL of one map task attempt's shuffle object.
pub fn shuffle_object_url(root: &str, job: &JobId, stage: StageId, partition: u32, attempt: u32) -> String {
    store::join(root, &format!("{job}/{stage}/{partition}.{attempt}.arrows"))
}

/// The prefix of one stage's shuffle objects: each is this followed by
/// `{partition}.{attempt}.arrows`.
pub fn stage_objects_prefix(root: &str, job: &JobId, stage: StageId) -> String {
    store::join(root, &format!("{job}/{stage}/"))
}

/// The URL prefix holding all of a job's shuffle objects.
pub fn job_shuffle_prefix(root: &str, job: &JobId) -> String {
    store::join(root, job.as_str())
}
