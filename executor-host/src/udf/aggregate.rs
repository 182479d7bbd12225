use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{Array, ArrayRef, BinaryArray, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{cast, concat, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{Accumulator, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature};
use ignis_core::error::IgnisError;

use super::host::{AccumulatorHandle, AggregateInstance, Component, FunctionKind};
use super::scalar::{coerce_arguments, run_outside_async};

/// An aggregate function of a Wasm component, as DataFusion sees it. Each
/// task's accumulators live as resources (one per group) in one instance.
#[derive(Debug)]
pub struct WasmAggregateUdf {
    component: Arc<Component>,
    name: String,
    arguments: Vec<DataType>,
    returns: DataType,
    signature: Signature,
}

impl WasmAggregateUdf {
    pub fn new(component: Arc<Component>, name: &str) -> Result<Self, IgnisError> {
        let info = component.function(name).ok_or_else(|| {
            IgnisError::Udf(format!("component {} has no function named '{name}'", component.label()))
        })?;
        let FunctionKind::Aggregate { arguments, returns } = &info.kind else {
            return Err(IgnisError::Udf(format!("'{name}' of component {} is not an aggregate", component.label())));
        };
        Ok(Self {
            name: name.to_owned(),
            arguments: arguments.clone(),
            returns: returns.clone(),
            signature: Signature::user_defined(info.volatility),
            component,
        })
    }

    fn groups(&self) -> DfResult<WasmGroups> {
        let instance = self.component.aggregate_instance(&self.name).map_err(external)?;
        Ok(WasmGroups {
            instance: Mutex::new(instance),
            groups: Vec::new(),
            arguments: self.arguments.clone(),
            returns: self.returns.clone(),
        })
    }
}

wasm_function_identity!(WasmAggregateUdf);

fn external(e: IgnisError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl AggregateUDFImpl for WasmAggregateUdf {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(self.returns.clone())
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        coerce_arguments(&self.name, &self.arguments, arg_types)
    }

    /// The partial state: the guest's bytes.
    fn state_fields(&self, _args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(format!("{}_state", self.name), DataType::Binary, true))])
    }

    fn accumulator(&self, _args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        Ok(Box::new(WasmAccumulator { groups: self.groups()? }))
    }

    fn groups_accumulator_supported(&self, _args: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, _args: AccumulatorArgs) -> DfResult<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(self.groups()?))
    }
}

/// Accumulators of many groups in one instance. (The mutex only makes the
/// store `Sync` for DataFusion; calls come with `&mut self`.)
#[derive(Debug)]
struct WasmGroups {
    instance: Mutex<AggregateInstance>,
    groups: Vec<Option<AccumulatorHandle>>,
    arguments: Vec<DataType>,
    returns: DataType,
}

impl WasmGroups {
    fn instance(&mut self) -> &mut AggregateInstance {
        self.instance.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    /// The argument columns cast to the declared types, as a batch.
    fn arguments_batch(&self, values: &[ArrayRef]) -> DfResult<RecordBatch> {
        let mut columns = Vec::with_capacity(values.len());
        let mut fields = Vec::with_capacity(values.len());
        for (i, (v, t)) in values.iter().zip(&self.arguments).enumerate() {
            columns.push(if v.data_type() == t { v.clone() } else { cast(v, t)? });
            fields.push(Field::new(format!("arg{i}"), t.clone(), true));
        }
        Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?)
    }

    fn handle(&mut self, group: usize) -> DfResult<AccumulatorHandle> {
        if self.groups.len() <= group {
            self.groups.resize(group + 1, None);
        }
        match self.groups[group] {
            Some(h) => Ok(h),
            None => {
                let h = run_outside_async(|| self.instance().create()).map_err(external)?;
                self.groups[group] = Some(h);
                Ok(h)
            }
        }
    }

    /// Row indices by group, in group order, skipping filtered-out rows.
    fn rows_by_group(group_indices: &[usize], filter: Option<&BooleanArray>) -> BTreeMap<usize, Vec<u32>> {
        let mut rows: BTreeMap<usize, Vec<u32>> = BTreeMap::new();
        for (row, group) in group_indices.iter().enumerate() {
            if filter.is_some_and(|f| !f.is_valid(row) || !f.value(row)) {
                continue;
            }
            rows.entry(*group).or_default().push(row as u32);
        }
        rows
    }

    fn update_groups(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        filter: Option<&BooleanArray>,
    ) -> DfResult<()> {
        let args = self.arguments_batch(values)?;
        let single_group = filter.is_none() && group_indices.windows(2).all(|w| w[0] == w[1]);
        if single_group && let Some(&group) = group_indices.first() {
            let h = self.handle(group)?;
            return run_outside_async(|| self.instance().update(h, &args)).map_err(external);
        }
        for (group, rows) in Self::rows_by_group(group_indices, filter) {
            let indices = UInt32Array::from(rows);
            let batch = take_record_batch(&args, &indices)?;
            let h = self.handle(group)?;
            run_outside_async(|| self.instance().update(h, &batch)).map_err(external)?;
        }
        Ok(())
    }

    fn merge_groups(&mut self, states: &ArrayRef, group_indices: &[usize]) -> DfResult<()> {
        let states = states
            .as_any()
            .downcast_ref::<BinaryArray>()
            .ok_or_else(|| DataFusionError::Internal("Wasm aggregate state is not binary".into()))?;
        for (group, rows) in Self::rows_by_group(group_indices, None) {
            let bytes: Vec<Vec<u8>> = rows
                .iter()
                .filter(|r| states.is_valid(**r as usize))
                .map(|r| states.value(*r as usize).to_vec())
                .collect();
            let h = self.handle(group)?;
            run_outside_async(|| self.instance().merge(h, &bytes)).map_err(external)?;
        }
        Ok(())
    }

    /// The emitted groups' accumulators (created empty for groups never updated).
    fn emit(&mut self, emit_to: EmitTo) -> DfResult<Vec<AccumulatorHandle>> {
        let taken = emit_to.take_needed(&mut self.groups);
        taken
            .into_iter()
            .map(|h| match h {
                Some(h) => Ok(h),
                None => run_outside_async(|| self.instance().create()).map_err(external),
            })
            .collect()
    }

    fn evaluate_handles(&mut self, handles: Vec<AccumulatorHandle>) -> DfResult<ArrayRef> {
        let mut values: Vec<ArrayRef> = Vec::with_capacity(handles.len());
        for h in handles {
            let batch = run_outside_async(|| self.instance().evaluate(h)).map_err(external)?;
            self.instance().drop_accumulator(h);
            match batch.columns() {
                [c] if c.len() == 1 && c.data_type() == &self.returns => values.push(c.clone()),
                _ => {
                    return Err(external(IgnisError::Udf(format!(
                        "UDF {:?} broke its contract: evaluate must return one {} value",
                        self.instance, self.returns
                    ))));
                }
            }
        }
        if values.is_empty() {
            return Ok(datafusion::arrow::array::new_empty_array(&self.returns));
        }
        Ok(concat(&values.iter().map(|a| a.as_ref()).collect::<Vec<_>>())?)
    }

    fn state_handles(&mut self, handles: Vec<AccumulatorHandle>) -> DfResult<ArrayRef> {
        let mut states: Vec<Vec<u8>> = Vec::with_capacity(handles.len());
        for h in handles {
            states.push(run_outside_async(|| self.instance().state(h)).map_err(external)?);
            self.instance().drop_accumulator(h);
        }
        Ok(Arc::new(BinaryArray::from_iter_values(states)))
    }
}

impl GroupsAccumulator for WasmGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        if self.groups.len() < total_num_groups {
            self.groups.resize(total_num_groups, None);
        }
        self.update_groups(values, group_indices, opt_filter)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> DfResult<ArrayRef> {
        let handles = self.emit(emit_to)?;
        self.evaluate_handles(handles)
    }

    fn state(&mut self, emit_to: EmitTo) -> DfResult<Vec<ArrayRef>> {
        let handles = self.emit(emit_to)?;
        Ok(vec![self.state_handles(handles)?])
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> DfResult<()> {
        if self.groups.len() < total_num_groups {
            self.groups.resize(total_num_groups, None);
        }
        let [states] = values else {
            return Err(DataFusionError::Internal("Wasm aggregate state has one column".into()));
        };
        self.merge_groups(states, group_indices)
    }

    /// Each row on its own: the state of a fresh accumulator updated with it
    /// (when DataFusion skips partial aggregation of high-cardinality groups).
    fn convert_to_state(&self, values: &[ArrayRef], opt_filter: Option<&BooleanArray>) -> DfResult<Vec<ArrayRef>> {
        let args = self.arguments_batch(values)?;
        let states = run_outside_async(|| -> Result<Vec<Vec<u8>>, IgnisError> {
            let mut instance = self.instance.lock().unwrap_or_else(|p| p.into_inner());
            let mut states = Vec::with_capacity(args.num_rows());
            for row in 0..args.num_rows() {
                let h = instance.create()?;
                if opt_filter.is_none_or(|f| f.is_valid(row) && f.value(row)) {
                    instance.update(h, &args.slice(row, 1))?;
                }
                states.push(instance.state(h)?);
                instance.drop_accumulator(h);
            }
            Ok(states)
        })
        .map_err(external)?;
        Ok(vec![Arc::new(BinaryArray::from_iter_values(states))])
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.groups.capacity() * std::mem::size_of::<Option<AccumulatorHandle>>()
    }
}

/// The accumulator of an aggregate without groups: one group of [`WasmGroups`].
#[derive(Debug)]
struct WasmAccumulator {
    groups: WasmGroups,
}

impl Accumulator for WasmAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let rows = values.first().map_or(0, |v| v.len());
        self.groups.update_groups(values, &vec![0; rows], None)
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let h = self.groups.handle(0)?;
        let batch = run_outside_async(|| self.groups.instance().evaluate(h)).map_err(external)?;
        match batch.columns() {
            [c] if c.len() == 1 => ScalarValue::try_from_array(c, 0),
            _ => Err(external(IgnisError::Udf(format!(
                "UDF {:?} broke its contract: evaluate must return one value",
                self.groups.instance
            )))),
        }
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        let h = self.groups.handle(0)?;
        let bytes = run_outside_async(|| self.groups.instance().state(h)).map_err(external)?;
        Ok(vec![ScalarValue::Binary(Some(bytes))])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let [states] = states else {
            return Err(DataFusionError::Internal("Wasm aggregate state has one column".into()));
        };
        self.groups.merge_groups(states, &vec![0; states.len()])
    }
}
