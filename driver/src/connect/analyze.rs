//! AnalyzePlan (schema, explain, printSchema, input files, DDL parsing,
//! persist/unpersist) and Config: the questions a client asks without running
//! anything.

use datafusion::arrow::datatypes::Schema;
use datafusion::dataframe::DataFrame;
use ignis_core::error::IgnisError;
use prost::Message;
use tonic::Status;

use super::proto::spark as sc;
use super::session::Session;
use super::{Inner, SPARK_VERSION, error, types};
use crate::planner::plan_error;

impl Inner {
    pub(super) async fn analyze(
        &self,
        session: &Session,
        request: sc::AnalyzePlanRequest,
    ) -> Result<sc::AnalyzePlanResponse, Status> {
        use sc::analyze_plan_request::Analyze;
        use sc::analyze_plan_response::{self as r, Result as R};
        let relation_of = |plan: Option<sc::Plan>| -> Result<sc::Relation, Status> {
            match plan.and_then(|p| p.op_type) {
                Some(sc::plan::OpType::Root(r)) => Ok(r),
                _ => Err(error::invalid("AnalyzePlan needs a relation")),
            }
        };
        let policy = self.policy(&session.tenant);
        let result = match request.analyze {
            Some(Analyze::Schema(s)) => {
                let (_, df, _) = self.plan(session, &policy, &relation_of(s.plan)?).await?;
                R::Schema(r::Schema { schema: Some(types::schema_to_spark(df.schema().as_arrow())) })
            }
            Some(Analyze::Explain(e)) => {
                let (_, df, _) = self.plan(session, &policy, &relation_of(e.plan)?).await?;
                R::Explain(r::Explain { explain_string: explain(df).await? })
            }
            Some(Analyze::TreeString(t)) => {
                let (_, df, _) = self.plan(session, &policy, &relation_of(t.plan)?).await?;
                R::TreeString(r::TreeString { tree_string: tree_string(df.schema().as_arrow()) })
            }
            Some(Analyze::IsLocal(l)) => {
                let relation = relation_of(l.plan)?;
                let local = matches!(relation.rel_type, Some(sc::relation::RelType::LocalRelation(_)));
                R::IsLocal(r::IsLocal { is_local: local })
            }
            Some(Analyze::IsStreaming(_)) => R::IsStreaming(r::IsStreaming { is_streaming: false }),
            Some(Analyze::InputFiles(f)) => {
                let (planner, _, _) = self.plan(session, &policy, &relation_of(f.plan)?).await?;
                let files =
                    planner.tables.lock().map(|t| t.values().map(|t| t.location.clone()).collect()).unwrap_or_default();
                R::InputFiles(r::InputFiles { files })
            }
            Some(Analyze::SparkVersion(_)) => R::SparkVersion(r::SparkVersion { version: SPARK_VERSION.into() }),
            Some(Analyze::DdlParse(d)) => {
                let ctx = self.context(session);
                // A bare type (`long`, `array<int>`) parses to that type, a column list to a struct.
                if let Ok(t) = types::parse_type_name(&d.ddl_string) {
                    let parsed = Some(types::to_spark(&t));
                    return Ok(sc::AnalyzePlanResponse {
                        session_id: session.id.clone(),
                        server_side_session_id: session.server_id.clone(),
                        result: Some(R::DdlParse(r::DdlParse { parsed })),
                    });
                }
                let schema = match types::parse_json_schema(&d.ddl_string).map_err(|e| error::from_ignis(&e))? {
                    Some(s) => s,
                    None => crate::planner::parse_schema(&ctx, &d.ddl_string).await.map_err(|e| {
                        error::from_ignis(&IgnisError::Plan(format!(
                            "[PARSE_SYNTAX_ERROR] SQL syntax error in the schema {:?}: {e}",
                            d.ddl_string
                        )))
                    })?,
                };
                R::DdlParse(r::DdlParse { parsed: Some(types::schema_to_spark(&schema)) })
            }
            Some(Analyze::SameSemantics(s)) => {
                let (_, a, _) = self.plan(session, &policy, &relation_of(s.target_plan)?).await?;
                let (_, b, _) = self.plan(session, &policy, &relation_of(s.other_plan)?).await?;
                R::SameSemantics(r::SameSemantics { result: a.logical_plan() == b.logical_plan() })
            }
            Some(Analyze::SemanticHash(h)) => {
                let (_, df, _) = self.plan(session, &policy, &relation_of(h.plan)?).await?;
                let text = df.logical_plan().display_indent().to_string();
                let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(text.as_bytes()));
                R::SemanticHash(r::SemanticHash {
                    result: i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]),
                })
            }
            Some(Analyze::Persist(p)) => {
                let relation = p.relation.ok_or_else(|| error::invalid("persist() of nothing"))?;
                // Plan now: caching a DataFrame that cannot run is an error at once.
                self.plan(session, &policy, &relation).await?;
                session.persist(relation.encode_to_vec());
                R::Persist(r::Persist {})
            }
            Some(Analyze::Unpersist(u)) => {
                let relation = u.relation.ok_or_else(|| error::invalid("unpersist() of nothing"))?;
                if let Some(Some(location)) = session.unpersist(&relation.encode_to_vec()) {
                    self.delete(&location).await;
                }
                R::Unpersist(r::Unpersist {})
            }
            Some(Analyze::GetStorageLevel(g)) => {
                let relation = g.relation.ok_or_else(|| error::invalid("storageLevel of nothing"))?;
                let cached = session.is_persisted(&relation.encode_to_vec());
                let level = sc::StorageLevel {
                    use_disk: cached,
                    use_memory: false,
                    use_off_heap: false,
                    deserialized: false,
                    replication: i32::from(cached),
                };
                R::GetStorageLevel(r::GetStorageLevel { storage_level: Some(level) })
            }
            None => return Err(error::invalid("AnalyzePlan without a question")),
        };
        Ok(sc::AnalyzePlanResponse {
            session_id: session.id.clone(),
            server_side_session_id: session.server_id.clone(),
            result: Some(result),
        })
    }

    pub(super) fn config(
        &self,
        session: &Session,
        operation: sc::config_request::Operation,
    ) -> Result<sc::ConfigResponse, Status> {
        use sc::config_request::operation::OpType;
        let pair = |key: &str, value: Option<String>| sc::KeyValue { key: key.to_string(), value };
        let mut pairs = Vec::new();
        let mut warnings = Vec::new();
        match operation.op_type {
            Some(OpType::Set(set)) => {
                for kv in set.pairs {
                    match kv.value {
                        Some(value) => session.set_config(&kv.key, &value).map_err(|e| error::from_ignis(&e))?,
                        None => session.unset_config(&kv.key),
                    }
                    if !kv.key.starts_with("spark.") {
                        warnings.push(format!("{} is not a Spark setting; Ignis keeps it but does not use it", kv.key));
                    }
                }
            }
            Some(OpType::Get(get)) => {
                for key in get.keys {
                    let value = session.config(&key).ok_or_else(|| error::conf_not_found(&key))?;
                    pairs.push(pair(&key, Some(value)));
                }
            }
            Some(OpType::GetWithDefault(get)) => {
                for kv in get.pairs {
                    pairs.push(pair(&kv.key, session.config(&kv.key).or(kv.value)));
                }
            }
            Some(OpType::GetOption(get)) => {
                for key in get.keys {
                    pairs.push(pair(&key, session.config(&key)));
                }
            }
            Some(OpType::GetAll(all)) => {
                let prefix = all.prefix.unwrap_or_default();
                pairs.extend(session.all_config(&prefix).into_iter().map(|(k, v)| pair(&k, Some(v))));
            }
            Some(OpType::Unset(unset)) => unset.keys.iter().for_each(|k| session.unset_config(k)),
            Some(OpType::IsModifiable(m)) => {
                for key in m.keys {
                    pairs.push(pair(&key, Some(super::session::is_modifiable(&key).to_string())));
                }
            }
            None => return Err(error::invalid("a Config request without an operation")),
        }
        Ok(sc::ConfigResponse {
            session_id: session.id.clone(),
            server_side_session_id: session.server_id.clone(),
            pairs,
            warnings,
        })
    }
}

async fn explain(df: DataFrame) -> Result<String, Status> {
    let logical = df.logical_plan().display_indent().to_string();
    let physical = df.create_physical_plan().await.map_err(|e| error::from_ignis(&plan_error("explain", e)))?;
    let physical = datafusion::physical_plan::displayable(physical.as_ref()).indent(true).to_string();
    Ok(format!("== Logical Plan ==\n{logical}\n\n== Physical Plan ==\n{physical}"))
}

/// `printSchema()`'s text.
fn tree_string(schema: &Schema) -> String {
    let mut out = String::from("root\n");
    for f in schema.fields() {
        let t = types::to_spark(f.data_type());
        out.push_str(&format!(" |-- {}: {} (nullable = {})\n", f.name(), simple_name(&t), f.is_nullable()));
    }
    out
}

fn simple_name(t: &sc::DataType) -> String {
    use sc::data_type::Kind;
    match &t.kind {
        Some(Kind::Boolean(_)) => "boolean".into(),
        Some(Kind::Byte(_)) => "byte".into(),
        Some(Kind::Short(_)) => "short".into(),
        Some(Kind::Integer(_)) => "integer".into(),
        Some(Kind::Long(_)) => "long".into(),
        Some(Kind::Float(_)) => "float".into(),
        Some(Kind::Double(_)) => "double".into(),
        Some(Kind::Decimal(d)) => format!("decimal({},{})", d.precision.unwrap_or(10), d.scale.unwrap_or(0)),
        Some(Kind::String(_)) => "string".into(),
        Some(Kind::Binary(_)) => "binary".into(),
        Some(Kind::Date(_)) => "date".into(),
        Some(Kind::Timestamp(_)) => "timestamp".into(),
        Some(Kind::TimestampNtz(_)) => "timestamp_ntz".into(),
        Some(Kind::Array(_)) => "array".into(),
        Some(Kind::Struct(_)) => "struct".into(),
        Some(Kind::Map(_)) => "map".into(),
        _ => "unknown".into(),
    }
}
