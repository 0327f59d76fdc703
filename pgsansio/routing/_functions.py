"""Functions a query may call and still run on a replica.

A SELECT that calls a function not named here goes to the primary. The test is not
PostgreSQL's volatility class: ``random()`` and ``pg_sleep()`` are VOLATILE but change
nothing and work on a hot standby, so they are here; ``nextval()``, ``setval()``,
``currval()`` (session-local: a replica never saw the ``nextval``), ``set_config()``
(session state the engine cannot follow), ``pg_notify()``, the ``pg_advisory_*`` and
``pg_try_advisory_*`` locks, the ``lo_*`` large-object calls, ``txid_current()`` and
``pg_current_wal_lsn()`` (both fail during recovery) are not, and neither is any user
function: we cannot see its body, so it might write.

A name matches unqualified or qualified with ``pg_catalog`` only; ``myschema.lower()``
is a user function. A user function that shadows a built-in through ``search_path``
(pg_catalog placed after the user's schema) is not detected.
"""

from __future__ import annotations

READ_SAFE_FUNCTIONS: frozenset[str] = frozenset(
    {
        # aggregates
        "count", "sum", "avg", "min", "max", "array_agg", "string_agg", "bool_and",
        "bool_or", "every", "bit_and", "bit_or", "bit_xor", "json_agg", "jsonb_agg",
        "json_object_agg", "jsonb_object_agg", "xmlagg", "any_value", "stddev",
        "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp", "corr",
        "covar_pop", "covar_samp", "regr_slope", "regr_intercept", "regr_count",
        "percentile_cont", "percentile_disc", "mode", "range_agg", "range_intersect_agg",
        # window functions
        "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile", "lag",
        "lead", "first_value", "last_value", "nth_value",
        # conditionals (COALESCE, GREATEST, LEAST, NULLIF are not calls in the parse
        # tree, listed for whoever reads this as the list of what is allowed)
        "coalesce", "nullif", "greatest", "least", "num_nulls", "num_nonnulls",
        # date and time
        "now", "clock_timestamp", "statement_timestamp", "transaction_timestamp",
        "timeofday", "date_trunc", "date_part", "date_bin", "extract", "age",
        "make_date", "make_time", "make_timestamp", "make_timestamptz", "make_interval",
        "to_timestamp", "to_char", "to_date", "to_number", "justify_days",
        "justify_hours", "justify_interval", "isfinite", "timezone", "overlaps",
        # strings
        "lower", "upper", "initcap", "length", "char_length", "character_length",
        "octet_length", "bit_length", "substring", "substr", "btrim", "ltrim", "rtrim",
        "trim", "position", "strpos", "overlay", "concat", "concat_ws", "format", "left",
        "right", "lpad", "rpad", "repeat", "replace", "reverse", "split_part",
        "starts_with", "translate", "ascii", "chr", "md5", "sha224", "sha256", "sha384",
        "sha512", "encode", "decode", "to_hex", "quote_ident", "quote_literal",
        "quote_nullable", "regexp_replace", "regexp_match", "regexp_matches",
        "regexp_split_to_array", "regexp_split_to_table", "regexp_like", "regexp_count",
        "regexp_substr", "regexp_instr", "string_to_array", "string_to_table",
        "array_to_string", "normalize", "casefold", "convert_from", "convert_to",
        "unistr", "similar_to_escape", "like_escape",
        # numbers
        "abs", "ceil", "ceiling", "floor", "round", "trunc", "mod", "div", "power", "pow",
        "sqrt", "cbrt", "exp", "ln", "log", "log10", "sign", "pi", "degrees", "radians",
        "gcd", "lcm", "factorial", "width_bucket", "scale", "min_scale", "trim_scale",
        "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "random", "random_normal",
        # arrays and set-returning helpers
        "array_length", "array_lower", "array_upper", "array_dims", "array_ndims",
        "cardinality", "array_position", "array_positions", "array_append",
        "array_prepend", "array_cat", "array_remove", "array_replace", "array_fill",
        "array_reverse", "array_sort", "trim_array", "unnest", "generate_series",
        "generate_subscripts",
        # JSON
        "to_json", "to_jsonb", "row_to_json", "array_to_json", "json_build_object",
        "jsonb_build_object", "json_build_array", "jsonb_build_array", "json_object",
        "jsonb_object", "json_array_length", "jsonb_array_length", "json_typeof",
        "jsonb_typeof", "json_extract_path", "jsonb_extract_path",
        "json_extract_path_text", "jsonb_extract_path_text", "json_each", "jsonb_each",
        "json_each_text", "jsonb_each_text", "json_object_keys", "jsonb_object_keys",
        "json_array_elements", "jsonb_array_elements", "json_array_elements_text",
        "jsonb_array_elements_text", "json_strip_nulls", "jsonb_strip_nulls", "jsonb_set",
        "jsonb_set_lax", "jsonb_insert", "jsonb_pretty", "jsonb_path_query",
        "jsonb_path_query_array", "jsonb_path_query_first", "jsonb_path_exists",
        "jsonb_path_match", "json_populate_record", "jsonb_populate_record",
        "json_populate_recordset", "jsonb_populate_recordset", "json_to_record",
        "jsonb_to_record", "json_to_recordset", "jsonb_to_recordset",
        # UUIDs (volatile, but they only read a random source)
        "gen_random_uuid", "uuidv4", "uuidv7", "uuid_extract_timestamp",
        "uuid_extract_version",
        # session and server information
        "version", "current_setting", "current_database", "current_schema",
        "current_schemas", "current_user", "session_user", "current_role", "user",
        "current_catalog", "pg_backend_pid", "inet_server_port", "inet_server_addr",
        "inet_client_addr", "inet_client_port", "pg_is_in_recovery",
        "pg_last_wal_receive_lsn", "pg_last_wal_replay_lsn",
        "pg_last_xact_replay_timestamp", "pg_postmaster_start_time",
        "pg_conf_load_time", "pg_client_encoding", "pg_encoding_to_char",
        "pg_jit_available", "pg_sleep", "pg_sleep_for", "pg_sleep_until",
        # catalog helpers
        "pg_typeof", "format_type", "to_regclass", "to_regtype", "to_regproc",
        "to_regprocedure", "to_regnamespace", "to_regrole", "pg_get_viewdef",
        "pg_get_indexdef", "pg_get_constraintdef", "pg_get_functiondef",
        "pg_get_function_arguments", "pg_get_function_result", "pg_get_triggerdef",
        "pg_get_expr", "pg_get_userbyid", "pg_get_serial_sequence", "pg_get_keywords",
        "pg_table_is_visible", "pg_type_is_visible", "pg_function_is_visible",
        "obj_description", "col_description", "shobj_description",
        "has_table_privilege", "has_schema_privilege", "has_database_privilege",
        "has_column_privilege", "has_function_privilege", "has_sequence_privilege",
        "pg_has_role", "pg_relation_size", "pg_total_relation_size", "pg_table_size",
        "pg_indexes_size", "pg_database_size", "pg_size_pretty", "pg_size_bytes",
        "pg_column_size", "pg_relation_filenode", "pg_relation_filepath",
        "pg_tablespace_location", "pg_settings_get_flags", "pg_input_is_valid",
        "pg_input_error_info",
    }
)  # fmt: skip
