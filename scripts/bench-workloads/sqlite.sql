create table t(a integer primary key, b text, c real);
with recursive x(i) as (select 1 union all select i + 1 from x where i < 200000)
insert into t select i, printf('row-%d-%s', i, hex(randomblob(8))), i * 1.5 from x;
create index tb on t(b);
select count(*), sum(c) from t where b like 'row-1%';
