"""Which pyspark.sql.functions names Ignis resolves: the lists the README's
function table is made of, kept true by asking the server."""

import pytest
from pyspark.sql import functions as F

# Names a Spark Connect client may call that resolve to a function here.
SUPPORTED = """abs acos acosh approx_count_distinct ascii asin asinh atan atan2 atanh avg bit_and bit_or bit_xor bool_and bool_or btrim cbrt ceil ceiling char_length character_length chr coalesce collect_list collect_set concat concat_ws contains corr cos cosh cot count count_distinct covar_pop covar_samp cume_dist current_date current_timestamp date_add date_diff date_format date_sub date_trunc datediff day dayofmonth dayofweek dayofyear decode degrees dense_rank encode endswith exp expm1 factorial first first_value floor from_unixtime greatest hour ifnull initcap instr isnan isnotnull isnull lag last last_value lcase lead least left length levenshtein ln log log10 log1p log2 lower lpad ltrim make_date max mean median min minute month nanvl now nth_value ntile nullif nvl nvl2 octet_length overlay percent_rank percentile_approx pi pmod position pow power quarter radians rand rank regexp_count regexp_like regexp_replace repeat replace reverse right round row_number rpad rtrim second signum sin sinh split_part sqrt startswith stddev stddev_pop stddev_samp struct substr substring substring_index sum sum_distinct tan tanh to_char to_date to_timestamp translate trim trunc ucase upper var_pop var_samp variance weekday weekofyear when year""".split()

# Names that do not yet (most need DataFusion's nested and crypto function
# features, or Spark semantics from datafusion-spark).
NOT_YET = """add_months aggregate array array_contains array_distinct array_except array_intersect array_join array_max array_min array_position array_remove array_repeat array_sort array_union arrays_zip base64 bin cardinality crc32 element_at explode filter flatten format_number format_string from_json from_utc_timestamp get_json_object hash hex kurtosis last_day locate map_from_arrays map_keys map_values max_by md5 min_by mode months_between next_day percentile posexplode randn regexp_extract regexp_substr rint sequence sha1 sha2 shuffle size skewness slice sort_array soundex split to_json to_number to_unix_timestamp to_utc_timestamp transform try_add try_divide try_to_number typeof unbase64 unhex unix_timestamp xxhash64""".split()


def resolves(spark, name):
    try:
        spark.range(1).select(F.call_function(name, F.lit("1"))).collect()
        return True
    except Exception as e:  # a signature error still means the name resolved
        return "UNRESOLVED_ROUTINE" not in str(e)


@pytest.mark.parametrize("name", SUPPORTED)
def test_supported_function_resolves(spark, name):
    assert resolves(spark, name)


@pytest.mark.parametrize("name", NOT_YET)
def test_not_yet_function_is_named_in_the_error(spark, name):
    assert not resolves(spark, name), f"{name} resolves now: move it to SUPPORTED and to the README"
