"""SQLAlchemy Core and ORM over the sqlite+sqld dialect, against a live server."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, ForeignKey, Integer, LargeBinary, String, create_engine, insert, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Session, relationship


@pytest.fixture
def engine(sqld_server, table_name):
    e = create_engine(f"sqlite+sqld://tester@{sqld_server.host}:{sqld_server.port}/sa_{table_name}")
    yield e
    e.dispose()


def test_core(engine):
    from sqlalchemy import MetaData, Table

    meta = MetaData()
    items = Table("items", meta, Column("id", Integer, primary_key=True), Column("name", String(50)),
                  Column("data", LargeBinary))
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(insert(items), [{"name": "a", "data": b"\x00"}, {"name": "b", "data": None}])
    with engine.connect() as conn:
        rows = conn.execute(select(items.c.name, items.c.data).order_by(items.c.id)).all()
        assert [tuple(r) for r in rows] == [("a", b"\x00"), ("b", None)]
        assert conn.execute(text("select count(*) from items where name = :n"), {"n": "a"}).scalar() == 1
    with engine.connect() as conn:
        conn.execute(insert(items).values(name="c"))
        conn.rollback()
        assert conn.execute(select(items.c.name).where(items.c.name == "c")).all() == []


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id = Column(Integer, primary_key=True)
    name = Column(String, unique=True, nullable=False)
    books = relationship("Book", back_populates="author")


class Book(Base):
    __tablename__ = "books"
    id = Column(Integer, primary_key=True)
    title = Column(String)
    author_id = Column(Integer, ForeignKey("authors.id"))
    author = relationship("Author", back_populates="books")


def test_orm(engine):
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        ann = Author(name="Ann", books=[Book(title="One"), Book(title="Two")])
        session.add(ann)
        session.commit()
        assert ann.id is not None and all(b.id is not None for b in ann.books)
    with Session(engine) as session:
        author = session.scalars(select(Author).where(Author.name == "Ann")).one()
        assert sorted(b.title for b in author.books) == ["One", "Two"]
        session.add(Author(name="Ann"))
        with pytest.raises(IntegrityError):
            session.commit()
        session.rollback()
        assert session.scalar(select(Book.title).join(Author).where(Book.title == "Two")) == "Two"
