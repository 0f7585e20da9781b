"""clean_metadata + build_vocab written for DuckDB: the single-machine pipeline the Spark jobs are
measured against in ``bench/pipeline_throughput.py``.

Two versions, both on the 25-column layout:

* :func:`minimal_sql` - only the filtering and the tag counting (kept photos and the vocabulary);
  no rejects table, no place levels beyond the town, no duplicate check, no dataset.
* :func:`full_sql` - the same work and outputs as the two Spark jobs: every line kept or rejected
  with the same reasons in the same order, town / region / country / continent, one row per
  photo_id, the vocabulary, the 1..15-tag dataset with ``tag_ids`` in file order and a
  hash split, the place-name list (from every ``yfcc100m_places`` record, as
  :mod:`pipeline.place_names` builds it) and the statistics, all written as Parquet.

Kept photos, rejects per reason, vocabulary size, dataset size and the (name, level) pairs of the
place-name list of the full version are compared with Spark's in the benchmark, so the two
engines are seen to do the same job.
DuckDB has no xxhash64, so splits come from its own ``hash``: same sizes, different photos.
"""
from __future__ import annotations

from pipeline import yfcc
from pipeline.parse import PLACES_VALUE
from pipeline.place_names import LEVEL_OF_TYPE

#: White space as :func:`pipeline.parse.normalize_tag` removes it (Python's ``\s`` on str, Java's
#: ``(?U)\s`` plus U+001C..U+001F), in RE2, whose ``\s`` is ASCII only.
_WHITE_SPACE_RE = r"[\s\v\x{1C}-\x{1F}\x{85}\p{Z}]+"
#: Any Unicode decimal digit (RE2's ``\d`` is ASCII only).
_DIGIT_RE = r"\p{Nd}"
#: Unicode's cased and case-ignorable characters (letters, marks, format characters and the
#: apostrophes, dots and colons inside words), for the final-sigma rule of lower-casing; ``''``
#: is the apostrophe, doubled inside the SQL string.
_CASED = r"\p{Lu}\p{Ll}\p{Lt}"
_CASE_IGNORABLE = (r"\p{Mn}\p{Me}\p{Cf}\p{Lm}\p{Sk}''.:\x{B7}\x{387}\x{5F4}\x{2018}\x{2019}\x{2024}\x{2027}"
                   r"\x{FE13}\x{FE52}\x{FE55}\x{FF07}\x{FF0E}\x{FF1A}")


def _read_lines(path: str) -> str:
    """Each line as one VARCHAR (0x01 never occurs in YFCC's encoded text), with its file name."""
    return (f"read_csv('{path}', columns={{'line': 'VARCHAR'}}, delim='\\x01', quote='', escape='', "
            "header=false, auto_detect=false, filename=true, max_line_size=4000000, strict_mode=false)")


def _decode(x: str) -> str:
    return f"coalesce(try(url_decode(replace({x}, '+', ' '))), replace({x}, '+', ' '))"


def _normalize(x: str, *, encoded: bool = True) -> str:
    """Tag normalisation (docs/method.md) of one tag: decode, lower-case, drop white space (digit and empty tags: caller)."""
    return f"regexp_replace(lower({_decode(x) if encoded else x}), '\\s+', '', 'g')"


def _lower(x: str) -> str:
    """Lower-case like Python's ``str.lower`` and Spark's ``lower`` (Java's), which DuckDB's does not.

    They differ in two places (checked over all code points): U+0130 (capital I with dot) becomes ``i`` plus U+0307, not
    ``i``, and a capital sigma ending a word (after a cased letter, not before one) becomes ``ς``.
    """
    ci, cased = _CASE_IGNORABLE, _CASED
    sigma = f"'([{cased}][{ci}]*)\u03a3([{ci}]*)([^{cased}{ci}]|$)'"
    final_sigma = f"regexp_replace({x}, {sigma}, '\\1\u03c2\\2\\3', 'g')"
    return f"lower(replace({final_sigma}, '\u0130', 'i\u0307'))"


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _place_names_sql(places: str, out: str) -> str:
    """The place-name list the way :func:`pipeline.place_names.place_names` builds it.

    Every entry of every well-formed places line (kept photo or not, not only the first of each
    level) whose type :data:`pipeline.place_names.LEVEL_OF_TYPE` lists, reduced to distinct
    (encoded name, level) pairs, decoded, plus the continent of each country name; names
    normalised like tags (Unicode white space and digits, as Spark does), distinct (name, level).
    Needs the ``continents`` table.
    """
    level_of_type = ", ".join(f"({_sql_str(t)}, {_sql_str(lvl)})" for t, lvl in LEVEL_OF_TYPE.items())
    norm = f"regexp_replace({_lower('raw')}, '{_WHITE_SPACE_RE}', '', 'g')"
    return f"""COPY (
            WITH s AS (SELECT string_split(line, chr(9)) AS f FROM {_read_lines(places)}),
            v AS (SELECT rtrim(f[2], chr(13)) AS v FROM s
                  WHERE len(f) = 2 AND TRY_CAST(f[1] AS BIGINT) IS NOT NULL),
            e AS (SELECT string_split(unnest(string_split(v, ',')), ':') AS p FROM v
                  WHERE regexp_full_match(v, '{PLACES_VALUE}')),
            t AS (SELECT DISTINCT e.p[2] AS name, lt.level
                  FROM e JOIN (VALUES {level_of_type}) lt(type, level) ON e.p[3] = lt.type),
            d AS (SELECT {_decode('name')} AS raw, level FROM t),
            r AS (SELECT raw, level FROM d
                  UNION ALL SELECT c.continent AS raw, 'continent' AS level
                  FROM d JOIN continents c ON d.level = 'country' AND d.raw = c.country),
            n AS (SELECT {norm} AS name, level FROM r WHERE raw IS NOT NULL)
            SELECT DISTINCT name, level FROM n WHERE name <> '' AND NOT regexp_matches(name, '{_DIGIT_RE}')
            ORDER BY level, name)
        TO '{out}/place_names.parquet' (FORMAT parquet)"""


def _place(value: str, types: tuple[str, ...]) -> str:
    alts = "|".join(t for t in types)
    found = f"regexp_extract({value}, '(?:^|,)[^:,]*:([^:,]*:)(?:{alts})(?:,|$)', 1)"
    return f"CASE WHEN {found} <> '' THEN {_decode(f'{found}[:-2]')} END"


def minimal_sql(dataset: str, places: str, drop_top: int, size: int, out: str) -> list[str]:
    cols = ", ".join(f"'{c}': 'VARCHAR'" for c in yfcc.COLUMNS_25)
    read = (f"read_csv('{dataset}', delim='\t', quote='', escape='', header=false, columns={{{cols}}}, "
            "null_padding=true, ignore_errors=true, max_line_size=4000000)")
    return [
        f"""CREATE OR REPLACE TEMP TABLE places AS
            SELECT TRY_CAST(column0 AS BIGINT) AS photo_id,
                   regexp_extract(column1, '(?:^|,)\\d+:([^:,]*):Town(?:,|$)', 1) AS town
            FROM read_csv('{places}', delim='\t', quote='', escape='', header=false,
                          columns={{'column0': 'VARCHAR', 'column1': 'VARCHAR'}}, null_padding=true)""",
        f"""CREATE OR REPLACE TEMP TABLE clean AS
            WITH d AS (SELECT TRY_CAST(photo_id AS BIGINT) AS photo_id, TRY_CAST(longitude AS DOUBLE) AS lon,
                              TRY_CAST(latitude AS DOUBLE) AS lat, marker, user_tags FROM {read}),
            t AS (SELECT photo_id, lat, lon,
                         list_distinct(list_filter(
                             list_transform(string_split(user_tags, ','),
                                 lambda x: regexp_replace(lower(url_decode(replace(x, '+', ' '))), '\\s+', '', 'g')),
                             lambda x: x <> '' AND NOT regexp_matches(x, '\\d'))) AS tags
                  FROM d WHERE marker = '0' AND lat BETWEEN -90 AND 90 AND lon BETWEEN -180 AND 180
                        AND NOT (lat = -1 AND lon = -1) AND user_tags <> '')
            SELECT t.*, p.town FROM t JOIN places p USING (photo_id)
            WHERE p.town <> '' AND len(t.tags) > 0""",
        f"""CREATE OR REPLACE TEMP TABLE vocab AS
            SELECT row_number() OVER (ORDER BY n DESC, tag) - 1 - {drop_top} AS idx, tag, n FROM
              (SELECT tag, count(*) AS n FROM (SELECT unnest(tags) AS tag FROM clean) GROUP BY tag)
            QUALIFY idx >= 0 AND idx < {size}""",
        f"COPY clean TO '{out}/clean.parquet' (FORMAT parquet)",
        f"COPY vocab TO '{out}/vocab.parquet' (FORMAT parquet)",
    ]


def full_sql(dataset: str, places: str, out: str, *, drop_top: int, size: int, min_tags: int, max_tags: int,
             test: float, val: float, seed: int) -> list[str]:
    """Statements after a ``continents(country, continent)`` table has been registered."""
    p = {c: i + 1 for i, c in enumerate(yfcc.COLUMNS_25)}  # DuckDB lists are 1-based

    def f(name: str) -> str:
        return f"f[{p[name]}]"

    region = _place("v", yfcc.REGION_PLACE_TYPES)
    return [
        f"""CREATE OR REPLACE TEMP TABLE parsed AS
            WITH s AS (SELECT line, filename AS file, string_split(line, chr(9)) AS f FROM {_read_lines(dataset)}),
            c AS (SELECT *, TRY_CAST({f('longitude')} AS DOUBLE) AS lon, TRY_CAST({f('latitude')} AS DOUBLE) AS lat,
                         TRY_CAST({f('accuracy')} AS INTEGER) AS acc, TRY_CAST(rtrim({f('marker')}, chr(13)) AS INTEGER) AS marker,
                         TRY_CAST({f('photo_id')} AS BIGINT) AS pid, TRY_CAST({f('line_number')} AS BIGINT) AS ln,
                         TRY_CAST({f('date_uploaded')} AS BIGINT) AS du FROM s),
            g AS (SELECT *, NOT ({f('longitude')} = '' AND {f('latitude')} = '') AND lon IS NOT NULL AND lat IS NOT NULL
                            AND NOT (lon = -1 AND lat = -1) AS has_geo,
                         list_filter(list_transform(string_split({f('user_tags')}, ','), lambda x: {_normalize('x')}),
                                     lambda x: x <> '' AND NOT regexp_matches(x, '\\d')) AS t0 FROM c)
            SELECT file, line, pid AS photo_id, ln AS line_number, {f('photo_hash')} AS photo_hash,
                   {f('user_nsid')} AS user_nsid, {f('date_taken')} AS date_taken, du AS date_uploaded,
                   CASE WHEN has_geo THEN lat END AS latitude, CASE WHEN has_geo THEN lon END AS longitude,
                   CASE WHEN has_geo THEN acc END AS accuracy, {f('download_url')} AS download_url,
                   list_filter(t0, lambda x, i: list_position(t0, x) = i) AS tags,
                   CASE WHEN rtrim(line, chr(13)) = '' THEN 'empty_line'
                        WHEN len(f) <> 25 THEN 'wrong_column_count'
                        WHEN NOT ({f('longitude')} = '' AND {f('latitude')} = '') AND (lon IS NULL OR lat IS NULL) THEN 'bad_coordinates'
                        WHEN has_geo AND NOT (lon BETWEEN -180 AND 180 AND lat BETWEEN -90 AND 90) THEN 'coordinates_out_of_range'
                        WHEN has_geo AND {f('accuracy')} <> '' AND acc IS NULL THEN 'bad_accuracy'
                        WHEN marker IS NULL OR marker NOT IN (0, 1) THEN 'bad_marker'
                        WHEN pid IS NULL THEN 'bad_photo_id'
                        WHEN {f('line_number')} <> '' AND ln IS NULL THEN 'bad_line_number'
                        WHEN {f('date_uploaded')} <> '' AND du IS NULL THEN 'bad_date_uploaded'
                        WHEN marker = 1 THEN 'video'
                        WHEN NOT has_geo THEN 'no_geo'
                        WHEN len(list_filter(string_split({f('user_tags')}, ','), lambda x: x <> '')) = 0 THEN 'no_tags'
                        WHEN len(t0) = 0 THEN 'no_usable_tags' END AS reason
            FROM g""",
        f"""CREATE OR REPLACE TEMP TABLE places AS
            WITH s AS (SELECT string_split(line, chr(9)) AS f FROM {_read_lines(places)}),
            v AS (SELECT TRY_CAST(f[1] AS BIGINT) AS photo_id, len(f) AS n, rtrim(f[2], chr(13)) AS v FROM s),
            r AS (SELECT photo_id, CASE WHEN n <> 2 OR photo_id IS NULL THEN 'bad_places_line'
                                        WHEN NOT regexp_full_match(v, '{PLACES_VALUE}') THEN 'bad_place_entry' END AS places_reason,
                         {_place('v', ('Town',))} AS town, {region} AS region, {_place('v', ('Country',))} AS country FROM v)
            SELECT DISTINCT ON (photo_id) photo_id, places_reason,
                   CASE WHEN places_reason IS NULL THEN town END AS town,
                   CASE WHEN places_reason IS NULL THEN region END AS region,
                   CASE WHEN places_reason IS NULL THEN country END AS country
            FROM r WHERE photo_id IS NOT NULL ORDER BY photo_id, places_reason NULLS FIRST, town, region, country""",
        """CREATE OR REPLACE TEMP TABLE classified AS
            WITH j AS (SELECT d.* EXCLUDE (reason), pl.town, pl.region, pl.country, c.continent,
                              coalesce(d.reason, CASE WHEN pl.photo_id IS NULL THEN 'no_places'
                                                      WHEN pl.places_reason IS NOT NULL THEN 'bad_places'
                                                      WHEN pl.town IS NULL THEN 'no_town'
                                                      WHEN d.photo_hash IS NULL OR d.photo_hash = '' THEN 'no_photo_hash' END) AS reason
                       FROM parsed d LEFT JOIN places pl USING (photo_id) LEFT JOIN continents c USING (country))
            SELECT * EXCLUDE (reason),
                   coalesce(reason, CASE WHEN photo_id IS NOT NULL AND row_number() OVER (
                       PARTITION BY photo_id ORDER BY reason IS NOT NULL, line_number NULLS LAST, hash(line)) > 1
                       THEN 'duplicate_photo_id' END) AS reason
            FROM j""",
        f"""COPY (SELECT photo_id, photo_hash, line_number, user_nsid, date_taken, date_uploaded, latitude, longitude,
                         accuracy, download_url, tags, town, region, country, continent
                  FROM classified WHERE reason IS NULL) TO '{out}/clean.parquet' (FORMAT parquet)""",
        f"""COPY (SELECT reason, file, photo_id, line_number, CASE WHEN len(string_split(line, chr(9))) <> 25
                         OR photo_id IS NULL THEN line[:2000] END AS line
                  FROM classified WHERE reason IS NOT NULL) TO '{out}/clean_rejects.parquet' (FORMAT parquet)""",
        _place_names_sql(places, out),  # clean_metadata writes it, from every places record
        # build_vocab, from the written clean table as the Spark job does
        f"CREATE OR REPLACE TEMP VIEW clean AS SELECT * FROM read_parquet('{out}/clean.parquet')",
        f"""CREATE OR REPLACE TEMP TABLE vocab AS
            SELECT (row_number() OVER (ORDER BY n DESC, tag) - 1 - {drop_top})::INTEGER AS idx, tag, n FROM
              (SELECT tag, count(*) AS n FROM (SELECT unnest(tags) AS tag FROM clean) GROUP BY tag)
            QUALIFY idx >= 0 AND idx < {size}""",
        f"""CREATE OR REPLACE TEMP TABLE applied AS
            WITH e AS (SELECT photo_id, unnest(tags) AS tag, generate_subscripts(tags, 1) AS pos FROM clean),
            g AS (SELECT photo_id, list(v.idx ORDER BY pos) AS tag_ids FROM e JOIN vocab v USING (tag) GROUP BY photo_id)
            SELECT k.* EXCLUDE (tags), len(k.tags) AS n_tags, coalesce(g.tag_ids, []::INTEGER[]) AS tag_ids,
                   CASE WHEN len(coalesce(g.tag_ids, [])) < {min_tags} THEN 'too_few_vocab_tags'
                        WHEN len(g.tag_ids) > {max_tags} THEN 'too_many_vocab_tags' END AS reason,
                   (hash({seed}, k.photo_id) >> 11)::DOUBLE / 9007199254740992.0 AS u
            FROM clean k LEFT JOIN g USING (photo_id)""",
        f"""COPY (SELECT photo_id, photo_hash, user_nsid, latitude, longitude, tag_ids, town, region, country,
                         continent, download_url,
                         CASE WHEN u < {test} THEN 'test' WHEN u < {test + val} THEN 'val' ELSE 'train' END AS split
                  FROM applied WHERE reason IS NULL ORDER BY photo_id) TO '{out}/dataset.parquet' (FORMAT parquet)""",
        f"""COPY (SELECT photo_id, reason, len(tag_ids) AS vocab_tags FROM applied WHERE reason IS NOT NULL
                  ORDER BY photo_id) TO '{out}/dataset_rejects.parquet' (FORMAT parquet)""",
        f"COPY (SELECT * FROM vocab ORDER BY idx) TO '{out}/vocab.parquet' (FORMAT parquet)",
        """CREATE OR REPLACE TEMP TABLE stats AS
            SELECT count(*) AS clean_images, sum(n_tags) AS clean_tag_occurrences,
                   sum(len(tag_ids)) / sum(n_tags) AS vocab_coverage_of_tag_occurrences,
                   count(*) FILTER (WHERE reason IS NULL) AS images,
                   avg(len(tag_ids)) FILTER (WHERE reason IS NULL) AS tags_per_image,
                   (SELECT count(DISTINCT i) FROM (SELECT unnest(tag_ids) AS i FROM applied WHERE reason IS NULL))
                       AS vocab_tags_used
            FROM applied""",
    ]
