"""Extraction with the default model: a pydantic model filled from a contract of three times the
trained window, through constrained decoding, validates and holds the facts planted in one
clause."""

from __future__ import annotations

import random

import pytest
from pydantic import BaseModel, Field

from parallelcomp_llm import ParallelCompEngine

TOPICS = ["confidentiality", "force majeure", "termination", "governing law", "notices", "audit"]
FACTS = (
    "Section 212. Parties and price. This sale agreement is made between Northwind Traders, the "
    "buyer, and Blue Harbor Metals, the seller. The buyer pays the seller a price of 48500 EUR "
    "for the goods, delivered in Rotterdam."
)
QUESTION = (
    "Who is the buyer, who is the seller, what is the price in EUR, and where are the goods "
    "delivered?"
)


class Sale(BaseModel):
    buyer: str = Field(max_length=40)
    seller: str = Field(max_length=40)
    price_eur: int
    delivery_city: str = Field(max_length=30)


def contract(sections: int) -> list[str]:
    """Boilerplate clauses, one document each, with `FACTS` as section 212."""
    rng = random.Random(0)
    clauses = []
    for number in range(1, sections + 1):
        topic = rng.choice(TOPICS)
        clauses.append(
            f"Section {number}. {topic.capitalize()}. Each party shall comply with its "
            f"obligations on {topic} as set out in this section, and shall give the other party "
            f"written notice within {rng.randint(5, 90)} days of any event that affects them. The "
            f"obligations on {topic} survive for {rng.randint(1, 9)} years after the end of this "
            "agreement."
        )
    clauses[211] = FACTS
    return clauses


@pytest.mark.default_model
def test_a_pydantic_model_is_filled_from_a_contract_three_times_the_window():
    engine = ParallelCompEngine.default()
    documents = contract(400)
    assert engine.count_tokens("\n\n".join(documents)) > 3 * engine.native_window
    answer = engine.generate(documents, QUESTION, response_format=Sale, max_new_tokens=96)
    assert answer.finish_reason == "stop"
    assert 211 in answer.stats.kept_documents
    assert answer.parsed() == Sale(
        buyer="Northwind Traders",
        seller="Blue Harbor Metals",
        price_eur=48500,
        delivery_city="Rotterdam",
    )
