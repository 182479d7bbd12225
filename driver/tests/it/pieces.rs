//! A stage of many map tasks: its reduce tasks find their pieces through a
//! piece table stored once (not listed in every request), and answer as a
//! run with few tasks does.

use crate::common::*;

#[test]
fn reduce_tasks_of_hundreds_of_maps_read_their_pieces_from_a_stored_table() {
    let ws = orders_workspace();
    let made = ignis(&["gen-orders", "--out", "many", "--rows", "30000", "--files", "300"], ws.path());
    assert!(made.status.success(), "{}", stderr(&made));
    let job = |partitions: usize| {
        let name = format!("many{partitions}.toml");
        let text = format!(
            "sql = \"SELECT product, count(*) AS n, sum(quantity) AS q FROM orders GROUP BY product ORDER BY product\"\n\
             [tables.orders]\nformat = 'csv'\nlocation = 'many/'\n\
             options = {{ header = true, schema = 'order_id BIGINT, country STRING, product STRING, quantity INT, price DOUBLE, ts TIMESTAMP' }}\n\
             [config]\nshuffle_partitions = {partitions}\n"
        );
        std::fs::write(ws.path().join(&name), text).unwrap();
        name
    };
    let few = ignis(&["run", &job(4)], ws.path());
    assert!(few.status.success(), "{}", stderr(&few));
    let many = ignis(&["run", &job(300), "--executors", "2"], ws.path());
    assert!(many.status.success(), "{}", stderr(&many));
    // 300 map tasks (one per file) and 300 reduce tasks, over the 256 above
    // which a stage's pieces go to a stored table.
    let summary = stderr(&many);
    let tasks: usize = summary
        .split(" tasks (")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no task count: {summary}"));
    assert!(tasks >= 600, "{summary}");
    assert_eq!(stdout(&many), stdout(&few));
    assert!(stdout(&few).lines().count() > 5, "{}", stdout(&few));
}
